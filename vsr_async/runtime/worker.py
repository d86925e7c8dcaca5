"""GpuWorker: the only path from the event loop to the GPU thread.

Every torch call (model construction included) runs on one dedicated thread, because CUDA/cuDNN
handles are per thread and a cold thread pays ~10% on its first steps. Each async method is one
`run_in_executor` into plain synchronous engine code; the event loop never touches the engine
itself, and what it needs to know of it (step, resume point, runtime facts) is read on the GPU
thread at the end of each call and handed over here. No file I/O happens here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from vsr_async.records import StepResult, StepStats, ValidationResult
from vsr_async.settings import Config

if TYPE_CHECKING:
    from vsr_async.training.batch_fit import BatchPlan
    from vsr_async.training.engine import Resumed, TrainingEngine
    from vsr_async.training.rank_channel import Op

T = TypeVar("T")


class GpuWorker:
    """The GPU thread and the engine on it: named async methods, one executor call each."""

    def __init__(self, engine_factory: Callable[[], TrainingEngine]) -> None:
        self._factory = engine_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._engine: TrainingEngine | None = None  # touched on the GPU thread only
        self._lock = threading.Lock()  # guards the facts handed from the GPU thread
        self._facts_version = -1
        self._facts: dict[str, Any] | None = None  # changed runtime facts, not yet taken
        self.step: int | None = None  # optimizer steps done, as of the last call (None: no engine)
        self.resumed: Resumed | None = None  # what the engine continued from, set by `start`
        # Under torchrun (rank 0): whether every rank is at a round now, and the stop requests
        # other ranks sent with the last rounds (see training.rank_channel).
        self.distributed = False
        self.at_round = True
        self._rank_notes: list[str] = []

    @property
    def started(self) -> bool:
        return self.step is not None

    async def _call(self, fn: Callable[[TrainingEngine], T]) -> T:
        """Run `fn(engine)` on the GPU thread, then note what the event loop may read."""

        def on_gpu() -> T:
            engine = self._engine
            assert engine is not None, "the worker is not started"
            try:
                return fn(engine)
            finally:
                self._note(engine)

        return await asyncio.get_running_loop().run_in_executor(self._executor, on_gpu)

    def _note(self, engine: TrainingEngine) -> None:
        """On the GPU thread: the step, and the runtime facts if they changed."""
        self.step = engine.step
        channel = getattr(engine, "channel", None)  # a test's stand-in may have none
        if channel is not None:
            self.distributed = True
            self.at_round = engine.at_round
            notes, engine.rank_notes = engine.rank_notes, []
            with self._lock:
                self._rank_notes.extend(notes)
        version = getattr(engine, "runtime_version", None)  # a test's stand-in may have none
        if version is not None and version != self._facts_version:
            facts = engine.runtime_facts()
            with self._lock:
                self._facts_version, self._facts = version, facts

    async def start(self) -> None:
        """Build the engine (model, optimizer, data; a resume loads there too) on the GPU thread."""

        def build() -> TrainingEngine:
            engine = self._factory()
            self._engine = engine
            self.resumed = getattr(engine, "resumed", None)
            self._note(engine)
            return engine

        await asyncio.get_running_loop().run_in_executor(self._executor, build)

    def changed_runtime_facts(self) -> dict[str, Any] | None:
        """The engine's runtime facts (precision, batch plan, OOM events, validation tiling) if
        they changed since the last time they were taken, else None."""
        with self._lock:
            facts, self._facts = self._facts, None
        return facts

    def take_rank_notes(self) -> list[str]:
        """Stop requests other ranks sent since the last call (signals they received)."""
        with self._lock:
            notes, self._rank_notes = self._rank_notes, []
        return notes

    async def tell_ranks(self, op: Op) -> None:
        """Under torchrun: a round with `op` (every rank must be at a round: `at_round`)."""
        await self._call(lambda engine: engine.tell_ranks(op))

    async def release_ranks(self, reason: str) -> bool:
        """Under torchrun: tell the other ranks to stop, if they are at a round (else they end
        when this process does: their next exchange fails). Whether they were told."""
        if not (self.started and self.distributed and self.at_round):
            return False
        await self._call(lambda engine: engine.stop_ranks(reason))
        return True

    async def ensure_batch_plan(self) -> BatchPlan:
        """The batch plan (BATCH_SIZE="auto" on CUDA: the memory probe, once)."""
        return await self._call(lambda engine: engine.ensure_batch_plan())

    async def train_step(self) -> StepResult:
        return await self._call(lambda engine: engine.train_step())

    async def validate(
        self, progress: Callable[[float], None], should_stop: Callable[[], bool] = lambda: False
    ) -> ValidationResult:
        """Validate; `progress` runs on the event loop (a thread-safe hop), not the GPU thread.
        `should_stop` is polled on the GPU thread, so it must be thread-safe (an Event's is_set).
        """
        loop = asyncio.get_running_loop()

        def report(fraction: float) -> None:
            loop.call_soon_threadsafe(progress, fraction)

        return await self._call(lambda engine: engine.validate(report, should_stop))

    async def peek_stats(self) -> StepStats | None:
        """The logging window's numbers so far, without closing it (None: no step ran)."""
        return await self._call(lambda engine: engine.peek_stats())

    async def on_validation(self, step: int, quality_ki: float) -> None:
        """Validation quality for the adaptive system (plateau detection)."""
        await self._call(lambda engine: engine.on_validation(step, quality_ki))

    async def apply_config(self, config: Config) -> None:
        await self._call(lambda engine: engine.apply_config(config))

    async def capture_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs, as CPU copies (the GPU thread waits for the copy)."""
        return await self._call(lambda engine: engine.capture_state())

    async def run_on_engine(self, fn: Callable[[TrainingEngine], T]) -> T:
        """Run `fn(engine)` on the GPU thread: for tests and benchmarks that inspect the engine
        or inject a fault. The run itself uses the named methods above."""
        return await self._call(fn)

    async def close(self) -> None:
        if self._engine is not None:
            await self._call(lambda engine: engine.close())
        self._executor.shutdown(wait=True)
