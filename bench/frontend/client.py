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
    """One load-generator process: warm up, wait at ``barrier``, then the closed loop for
    ``duration_s``; puts its raw samples (``camserve_client.loadreport.Sample``) on ``queue``."""
    import asyncio

    from camserve_client.client import AsyncClient
    from camserve_client.loadgen import LoadConfig, LoadGenerator

    side, payload, per_call = CASES[case]

    async def run() -> list[Any]:
        gen = LoadGenerator(LoadConfig(target=target, model=model, payload=payload, images="photos",
                                       image_size=side, batch_per_call=per_call, quiet=True))
        client = AsyncClient(target, model=model, retries=0)
        try:
            await gen._prepare(client)
            call = gen._callable(client)
            await gen._closed(call, None, concurrency, warmup_s, None)
            await asyncio.to_thread(barrier.wait)  # every client and the CPU count start together
            samples, _ = await gen._closed(call, None, concurrency, duration_s, None)
            return samples
        finally:
            await client.close()

    queue.put(asyncio.run(run()))
