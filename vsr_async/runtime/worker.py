"""GpuWorker: the only path from the event loop to the GPU thread.

Every torch call (model construction included) runs on one dedicated thread, because CUDA/cuDNN
handles are per thread and a cold thread pays ~10% on its first steps. Each async method is one
`run_in_executor` into plain synchronous engine code; no file I/O happens here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vsr_async.records import StepResult, ValidationResult

T = TypeVar("T")


class GpuWorker:
    def __init__(self, engine_factory: Callable[[], Any]) -> None:
        self._factory = engine_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.engine: Any = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the GPU thread. Everything touching torch goes through here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def start(self) -> Any:
        """Build the engine (model, optimizer, data) on the GPU thread."""
        self.engine = await self.call(self._factory)
        return self.engine

    async def train_step(self) -> StepResult:
        return await self.call(self.engine.train_step)

    async def validate(
        self, progress: Callable[[float], None], should_stop: Callable[[], bool] = lambda: False
    ) -> ValidationResult:
        """Validate; `progress` runs on the event loop (a thread-safe hop), not the GPU thread.
        `should_stop` is polled on the GPU thread, so it must be thread-safe (an Event's is_set).
        """
        loop = asyncio.get_running_loop()

        def report(fraction: float) -> None:
            loop.call_soon_threadsafe(progress, fraction)

        return await self.call(self.engine.validate, report, should_stop)

    async def apply_config(self, config: Any) -> None:
        await self.call(self.engine.apply_config, config)

    async def close(self) -> None:
        if self.engine is not None:
            await self.call(self.engine.close)
        self._executor.shutdown(wait=True)
