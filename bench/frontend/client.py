"""One load-generator process of ``bench/frontend`` (its own module: ``spawn`` re-imports it)."""

from __future__ import annotations

import asyncio
from typing import Any

CASES = {  # name -> (model input side, payload, images per call)
    "png64": (64, "png", 1),
    "jpeg224": (224, "jpeg", 1),
    "batch8": (224, "jpeg", 8),
}

#: Connections each load-generator process opens (its callers are shared out over them). Why several:
#: the kernel spreads connections, never the calls of one connection, over the front-end processes
#: (SO_REUSEPORT picks one by a hash of the addresses), so two processes of one connection each landed
#: both on the same front end in half the runs and --frontends 2 measured as 1 (2026-12-01).
#: Sixteen connections in all stand for many callers, which is what several front ends are for.
CONNECTIONS = 8


def load_process(target: str, model: str, case: str, concurrency: int, warmup_s: float, duration_s: float,
                 queue: Any, barrier: Any, connections: int = CONNECTIONS) -> None:
    """One load-generator process: ``connections`` TCP connections (``LoadGenerator.clients``), connected
    and payloads serialized, then wait at ``barrier`` (every client ready), then one continuous closed
    loop of ``warmup_s + duration_s`` with ``concurrency`` callers shared out over the connections; puts
    all its samples (``camserve_client.tools.loadreport.Sample``, on its shared clock) on ``queue``: the
    parent counts the ones that complete inside the window it measured CPU over."""
    from camserve_client.tools.loadgen import LoadConfig, LoadGenerator

    side, payload, per_call = CASES[case]

    async def run() -> list[Any]:
        gen = LoadGenerator(LoadConfig(target=target, model=model, payload=payload, images="photos",
                                       image_size=side, batch_per_call=per_call, quiet=True,
                                       connections=min(connections, concurrency)))
        clients = gen.clients()
        try:
            await gen.prepare(clients[0])
            await asyncio.gather(*(c.channel.channel_ready() for c in clients))
            calls = gen.rpcs(clients)
            await asyncio.to_thread(barrier.wait)  # every client and the parent's clock start together
            samples, _ = await gen.closed(calls, None, concurrency, warmup_s, duration_s)
            return samples
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    queue.put(asyncio.run(run()))
