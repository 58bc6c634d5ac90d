"""One load-generator process of ``bench/frontend`` (its own module: ``spawn`` re-imports it)."""

from __future__ import annotations

from typing import Any

CASES = {  # name -> (model input side, payload, images per call)
    "png64": (64, "png", 1),
    "jpeg224": (224, "jpeg", 1),
    "batch8": (224, "jpeg", 8),
}


def load_process(target: str, model: str, case: str, concurrency: int, warmup_s: float, duration_s: float,
                 queue: Any, barrier: Any) -> None:
    """One load-generator process: connect and serialize, wait at ``barrier`` (every client ready), then
    one continuous closed loop of ``warmup_s + duration_s``; puts all its samples
    (``camserve_client.tools.loadreport.Sample``, on its shared clock) on ``queue``: the parent counts the
    ones that complete inside the window it measured CPU over."""
    import asyncio

    from camserve_client.client import AsyncClient
    from camserve_client.tools.loadgen import LoadConfig, LoadGenerator

    side, payload, per_call = CASES[case]

    async def run() -> list[Any]:
        gen = LoadGenerator(LoadConfig(target=target, model=model, payload=payload, images="photos",
                                       image_size=side, batch_per_call=per_call, quiet=True))
        client = AsyncClient(target, model=model, retries=0)
        try:
            await gen.prepare(client)
            call = gen.rpc(client)
            await asyncio.to_thread(barrier.wait)  # every client and the parent's clock start together
            samples, _ = await gen.closed(call, None, concurrency, warmup_s, duration_s)
            return samples
        finally:
            await client.close()

    queue.put(asyncio.run(run()))
