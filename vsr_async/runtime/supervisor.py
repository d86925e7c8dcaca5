"""Supervisor: the event loop's owner of the run.

It awaits training steps from the GPU worker, publishes their numbers to the store, executes
queued commands at step boundaries, runs scheduled and requested validations, hands snapshots to
the Statistik writer, and shuts down cleanly. Only the supervisor changes the run's `Phase`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from vsr_async.errors import (
    CommandNotAvailable,
    ConfigError,
    RankError,
    ValidationInterrupted,
    VsrError,
)
from vsr_async.files.statistics import StatisticsWriter
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.runtime import commands as cmd
from vsr_async.runtime.checkpointer import Checkpointer
from vsr_async.runtime.commands import Phase, RequestStatus, Trigger, ValidationRequest
from vsr_async.runtime.hooks import RunHook, RunHooks
from vsr_async.runtime.host_address import local_ip_address
from vsr_async.runtime.live_config import check_live_changes, live_values
from vsr_async.runtime.producers import CommandProducers
from vsr_async.runtime.publish import RunPublisher
from vsr_async.runtime.requests import RequestRegistry, fail_future, settle
from vsr_async.runtime.signals import StopSignals
from vsr_async.runtime.snapshot import request_metrics
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.worker import GpuWorker
from vsr_async.settings import Config
from vsr_async.training.rank_channel import HEARTBEAT_S, Continue, Pause, Resume

log = logging.getLogger(__name__)

SHUTDOWN_WRITE_TIMEOUT_S = 10.0  # Statistik files are small: longer means a hung disk


def validation_due(step: int, every: int) -> bool:
    return step > 0 and step % every == 0


def checkpoint_due(step: int, every: int) -> bool:
    return step > 0 and step % every == 0


class Supervisor(CommandProducers):
    def __init__(
        self,
        config: Config,
        *,
        run_dir: Path,
        worker: GpuWorker,
        store: StatsStore,
        statistics: StatisticsWriter,
        tensorboard: TensorBoardLogger,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.worker = worker
        self.store = store
        self.statistics = statistics
        self.tensorboard = tensorboard
        self.checkpointer = checkpointer
        self._phase = Phase.STARTING
        self.commands: asyncio.Queue[cmd.Command] = asyncio.Queue()
        self.registry = RequestRegistry(lambda: self.store.progress.step)
        self.hooks = RunHooks()  # web panel, keyboard, dashboard, live-config recorder, ...
        self.exit_code = 0
        self.stop_reason: str | None = None
        self._pending_names: list[str] = []  # queued command names, shown as "queued"
        # Set by the first stop request from any producer; the GPU thread polls it between
        # validation images, so a stop never waits for a whole validation set.
        self._stop_requested = threading.Event()
        self.signals = StopSignals(
            stop=lambda reason: self.stop(reason=reason),
            hard_exit=self.hooks.hard_exit,
            validating=lambda: self.phase is Phase.VALIDATING,
        )
        self.publisher = RunPublisher(store, tensorboard)
        self.started = asyncio.Event()
        self.finished = asyncio.Event()

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        """Only the supervisor moves the phase; the store shows it (`run_phase`)."""
        self._phase = phase
        self.store.set_phase(phase.value)

    @property
    def checkpoints_available(self) -> bool:
        return self.checkpointer is not None

    def add_hook(self, hook: RunHook) -> None:
        """Take part in the run (see `RunHook`); add before `run()` starts."""
        self.hooks.add(hook)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop at the next step boundary; a second one of either exits at once."""
        self.signals.install()

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Train until MAX_STEPS, a stop command or a signal; returns the process exit code."""
        try:
            await self.hooks.start()
            self.statistics.start()
            self.store.set_local_ip_address(await asyncio.to_thread(local_ip_address))
            if not self.worker.started:
                await self.worker.start()  # model, optimizer and data, on the GPU thread
            await self.worker.ensure_batch_plan()  # "auto": the probe
            self._publish_runtime()
            self.publisher.restore(self.worker.resumed)
            self.phase = Phase.RUNNING
            self.store.set_config_live(live_values(self.config))
            self.store.set_training(active=True, paused=False)
            self.started.set()
            await self._loop()
        finally:
            await self._shutdown()
        return self.exit_code

    def _publish_runtime(self) -> None:
        """Precision, batch plan, OOM events and validation tiling into the store's `runtime`,
        when the engine's have changed (noted by the worker at the end of each GPU call)."""
        facts = self.worker.changed_runtime_facts()
        if facts is not None:
            self.store.set_extra(**facts)

    async def _loop(self) -> None:
        if self.store.progress.step >= self.config.MAX_STEPS:
            self._begin_stop(f"already at MAX_STEPS={self.config.MAX_STEPS}")
        while self.phase is not Phase.STOPPING:
            self._stop_for_other_ranks()
            if self.worker.at_round:  # under torchrun: commands wait for the next round
                await self._handle_commands(block=self.phase is Phase.PAUSED)
            if self.phase is not Phase.RUNNING:
                continue
            result = await self.worker.train_step()
            self._publish_runtime()  # e.g. a batch plan reduced by an out-of-memory step
            nan_stop = self.publisher.step(result, self.config)
            if nan_stop is not None:
                self.exit_code = 1
                self._begin_stop(nan_stop)
            step = result.step
            if self.phase is Phase.RUNNING and validation_due(step, self.config.VAL_STEP_EVERY):
                await self._run_validation(Trigger.SCHEDULE, None)
            if checkpoint_due(step, self.config.SAVE_STEP_EVERY) and self.checkpointer is not None:
                await self.checkpointer.save("schedule")  # the write runs behind training
            if step >= self.config.MAX_STEPS:
                self._begin_stop(f"finished: MAX_STEPS={self.config.MAX_STEPS} reached")

    def _begin_stop(self, reason: str) -> None:
        if self.phase is not Phase.STOPPING:
            self.stop_reason = reason
            self.phase = Phase.STOPPING
            log.info("stopping: %s", reason)

    # --- commands ------------------------------------------------------------------------------

    async def _handle_commands(self, *, block: bool) -> None:
        """Execute queued commands; when `block` (paused), wait for at least one."""
        pending: list[cmd.Command] = []
        if block and self.worker.distributed:  # the other ranks wait in rounds: keep them
            try:
                pending.append(await asyncio.wait_for(self.commands.get(), HEARTBEAT_S))
            except TimeoutError:
                await self.worker.tell_ranks(Continue(self.worker.step or 0))
                return
        elif block:
            pending.append(await self.commands.get())
        while not self.commands.empty():
            pending.append(self.commands.get_nowait())
        for command in pending:
            self._pending_names.remove(command.name)
            self.store.set_pending_commands(self._pending_names)
            await self._execute(command)

    async def _execute(self, command: cmd.Command) -> None:
        try:
            outcome = await self._dispatch(command)
        except RankError:
            raise  # torchrun: another rank is gone; the run ends (no further round)
        except (CommandNotAvailable, VsrError) as exc:
            fail_future(command.result, exc)  # the producer may not be waiting
            return
        if isinstance(outcome, asyncio.Future):  # finished later (a checkpoint write)
            outcome.add_done_callback(lambda done: settle(command.result, done))
        elif not command.result.done():
            command.result.set_result(outcome)

    async def _dispatch(self, command: cmd.Command) -> Any:
        match command:
            case cmd.RunValidation(request=request):
                if self.phase is Phase.STOPPING:
                    raise CommandNotAvailable("the run is stopping")
                await self._run_validation(request.trigger, request)
                return request.id
            case cmd.Pause():
                return await self._pause(True)
            case cmd.Resume():
                return await self._pause(False)
            case cmd.TogglePause():
                return await self._pause(self.phase is not Phase.PAUSED)
            case cmd.SaveCheckpoint(reason=reason):
                return await self._save_checkpoint(reason)
            case cmd.Stop(reason=reason):
                self._begin_stop(reason)
                return "stopping"
            case cmd.ApplyConfig(request=request):
                return await self._apply_config(request)
        raise CommandNotAvailable(f"unknown command {command.name}")

    async def _pause(self, paused: bool) -> str:
        outcome = self._set_paused(paused)
        if self.worker.distributed:  # torchrun: every rank logs it at this step
            await self.worker.tell_ranks(Pause() if paused else Resume())
        return outcome

    def _stop_for_other_ranks(self) -> None:
        """Under torchrun: a signal another rank received stops the whole job, here."""
        for note in self.worker.take_rank_notes():
            log.warning("%s: stopping every rank", note)
            if not self._stop_requested.is_set():
                self.stop(reason=note)

    def _set_paused(self, paused: bool) -> str:
        if self.phase is Phase.STOPPING:
            raise CommandNotAvailable("the run is stopping")
        self.phase = Phase.PAUSED if paused else Phase.RUNNING
        self.store.set_training(paused=paused)
        log.info(
            "training %s at step %d", "paused" if paused else "resumed", self.store.progress.step
        )
        return "paused" if paused else "running"

    async def _save_checkpoint(self, reason: str) -> asyncio.Future[str | None]:
        """Copy now; the returned future resolves with the file name once it is on disk."""
        if self.checkpointer is None:
            raise CommandNotAvailable("checkpoints are off for this run")
        return await self.checkpointer.save(reason)

    async def _apply_config(self, request: cmd.ConfigRequest) -> dict[str, Any]:
        """Apply an accepted change; a failure is logged, fails its request and leaves the
        previous values in force (the engine gets them back)."""
        changes = request.changes
        request.status = RequestStatus.RUNNING
        try:
            # Checked again: a change accepted on top of one that then failed may not fit.
            new_config = check_live_changes(self.config, changes)
            await self.worker.apply_config(new_config)
        except Exception as exc:
            failure = self.registry.config_failed(request, changes, exc)
            if not isinstance(exc, ConfigError):  # the engine may hold part of it: undo
                await self.worker.apply_config(self.config)  # failing too is a bug: run stops
            raise failure from exc
        applied = {k: getattr(new_config, k) for k in changes}
        self.config = new_config
        if self.checkpointer is not None:
            self.checkpointer.apply_config(new_config)
        self.store.set_config_live(live_values(new_config))
        log.info("config changed at step %d: %s", self.store.progress.step, applied)
        # Hooks (runtime_config.json) run behind training; the shutdown awaits them.
        self.hooks.config_changed(new_config, applied, self.store.progress.step)
        self.registry.config_applied(request, applied)
        return applied

    # --- validation ----------------------------------------------------------------------------

    async def _run_validation(self, trigger: Trigger, request: ValidationRequest | None) -> None:
        """Validate on the worker, publish to the store FIRST, then snapshot and hand it over."""
        if request is not None:
            self.registry.validation_started(request)
        if self._stop_requested.is_set():  # a stop is queued: do not start a validation
            self.registry.fail(request, CommandNotAvailable("the run is stopping"))
            return
        previous = self.phase
        self.phase = Phase.VALIDATING
        self.store.validation_started(trigger.value)
        log.info("validation started at step %d (%s)", self.store.progress.step, trigger.value)
        try:
            if self.store.stats is None:  # before the first logging step: read them now
                stats = await self.worker.peek_stats()
                if stats is not None:
                    self.store.publish_stats(stats)
            result = await self.worker.validate(
                self.store.set_validation_progress, self._stop_requested.is_set
            )
        except RankError:
            raise  # torchrun: another rank is gone; the run ends (no further round)
        except ValidationInterrupted as exc:
            log.warning("%s: the run is stopping (an unfinished validation writes no file)", exc)
            self.store.validation_failed()
            self.phase = previous
            self.registry.fail(request, CommandNotAvailable(f"{exc} by a stop"))
            return
        except Exception as exc:
            log.exception("validation failed")
            self.store.validation_failed()
            self.phase = previous
            self.registry.fail(request, exc)
            return
        step = self.store.progress.step
        await self.worker.on_validation(step, result.quality_ki)
        self._publish_runtime()  # e.g. validation tiles after an out-of-memory clip
        # the phase leaves VALIDATING with `validation_running`, before the file's snapshot
        self.phase = previous if self.phase is Phase.VALIDATING else self.phase
        improved = self.store.publish_validation(result, step=step, trigger=trigger.value)
        snapshot = self.store.snapshot()  # the results are in; training may go on after this
        written = self.statistics.submit(step, snapshot)
        self.publisher.validation_logged(step, result, trigger.value)
        await self.hooks.validated(step, result, improved)
        if request is not None:
            metrics = request_metrics(snapshot)
            self.hooks.spawn(self.registry.finish(request, step, metrics, written))

    # --- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Final checkpoint, flush statistics (bounded), close TensorBoard, stop the hooks."""
        reason = self.stop_reason or "interrupted"
        self.phase = Phase.STOPPING
        self.store.set_training(active=False)
        started = time.monotonic()
        try:  # torchrun: the other ranks stop at this step (before the final checkpoint)
            await self.worker.release_ranks(reason)
        except RankError as exc:  # one of them is gone: the job ends anyway
            log.warning("could not tell the other ranks to stop: %s", exc)
        if self.checkpointer is not None and self.worker.started:
            try:
                await (await self.checkpointer.save("shutdown"))
            except Exception:
                log.exception("final checkpoint failed")
        if not await self.statistics.close(SHUTDOWN_WRITE_TIMEOUT_S):
            log.error("statistics not written for steps %s", self.statistics.pending_steps)
            self.exit_code = self.exit_code or 1
        await self.hooks.drain()  # e.g. runtime_config.json writes, validation requests
        self._fail_leftover_commands()
        await asyncio.to_thread(self.tensorboard.close)
        if self.checkpointer is not None:
            await self.checkpointer.close()
        await self.worker.close()
        self.store.mark_stopped(reason)
        self.phase = Phase.STOPPED
        await self.hooks.stop()  # after the drain: a hook may flush what is left
        log.info("run stopped (%s) after %.1f s of shutdown", reason, time.monotonic() - started)
        self.finished.set()

    def _fail_leftover_commands(self) -> None:
        while not self.commands.empty():
            command = self.commands.get_nowait()
            self._pending_names.remove(command.name)
            if isinstance(command, cmd.RunValidation):
                error = "the run stopped before this validation started"
                self.registry.fail(command.request, CommandNotAvailable("run stopped"), error)
            fail_future(command.result, CommandNotAvailable("the run stopped"))
