"""Supervisor: the event loop's owner of the run.

It awaits training steps from the GPU worker, publishes their numbers to the store, executes
queued commands at step boundaries, runs scheduled and requested validations, hands snapshots to
the Statistik writer, and shuts down cleanly. Only the supervisor changes the run's `Phase`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from vsr_async.errors import ConfigError, VsrError
from vsr_async.files.statistics import StatisticsWriter
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.records import StepResult, ValidationResult
from vsr_async.runtime import commands as cmd
from vsr_async.runtime.commands import (
    Phase,
    RequestStatus,
    Trigger,
    ValidationReport,
    ValidationRequest,
)
from vsr_async.runtime.live_config import (
    ConfigChangeFailed,
    check_against_pending,
    check_live_changes,
    describe_changes,
    live_values,
)
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.worker import GpuWorker
from vsr_async.training.validation import ValidationInterrupted

log = logging.getLogger(__name__)

MAX_REQUESTS_KEPT = 1000  # finished validation requests stay queryable (GET /api/requests/{id})
SHUTDOWN_WRITE_TIMEOUT_S = 10.0  # Statistik files are small: longer means a hung disk


class Service(Protocol):
    """Something that lives as long as the run: the web panel, the keyboard, the dashboard."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class CommandNotAvailable(Exception):
    """A command this run cannot carry out (e.g. a checkpoint before checkpoints exist)."""


class Checkpointer(Protocol):
    """Copies the state (awaited: the GPU thread is busy meanwhile), writes it behind."""

    async def save(self, reason: str) -> asyncio.Future[str]: ...

    async def save_best(self) -> asyncio.Future[str]: ...

    def apply_config(self, config: Any) -> None: ...

    async def close(self) -> None: ...


def _settle(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    """Copy a finished future's outcome into another (marking the exception retrieved)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
        target.exception()
    else:
        target.set_result(source.result())


def validation_due(step: int, every: int) -> bool:
    return step > 0 and step % every == 0


def checkpoint_due(step: int, every: int) -> bool:
    return step > 0 and step % every == 0


class Supervisor:
    def __init__(
        self,
        config: Any,
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
        self.requests: OrderedDict[str, cmd.Request] = OrderedDict()
        self.services: list[Service] = []
        self.config_listeners: list[Callable[[Any, dict[str, Any], int], Awaitable[None]]] = []
        self.validation_listeners: list[
            Callable[[int, ValidationResult, bool], Awaitable[None]]
        ] = []
        self.exit_code = 0
        self.stop_reason: str | None = None
        self._queued_validation: ValidationRequest | None = None
        self._pending_names: list[str] = []  # queued command names, shown as "queued"
        self._paused_before_validation = False
        self._background: set[asyncio.Task[Any]] = set()
        self._signals_seen = 0
        # Set by the first stop request from any producer; the GPU thread polls it between
        # validation images, so a stop never waits for a whole validation set.
        self._stop_requested = threading.Event()
        self._hard_exit_hooks: list[Callable[[], None]] = []
        self._nonfinite_reported = 0  # skipped non-finite steps already named in the log
        self._runtime_version = -1  # the engine's runtime facts last put into the store
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

    # --- producer API (keyboard, web, signals): enqueue only ---------------------------------

    def _enqueue(self, command: cmd.Command) -> asyncio.Future[Any]:
        self.commands.put_nowait(command)
        self._pending_names.append(command.name)
        self.store.set_pending_commands(self._pending_names)
        return command.result

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def request_validation(self, trigger: Trigger | str) -> ValidationRequest:
        """Ask for a validation; while one is queued and not started, the same request returns.

        Await `request.result` for the `ValidationReport` (resolved once its Statistik file is
        written).
        """
        if self.phase in (Phase.STOPPING, Phase.STOPPED) or self._stop_requested.is_set():
            raise CommandNotAvailable("the run is stopping")
        queued = self._queued_validation
        if queued is not None and queued.status is RequestStatus.QUEUED:
            return queued
        request = ValidationRequest(trigger=Trigger(trigger), result=self._future())
        self._remember(request)
        self._queued_validation = request
        self._enqueue(cmd.RunValidation(result=self._future(), request=request))
        return request

    def request(self, request_id: str) -> cmd.Request | None:
        """A validation or config request by id (GET /api/requests/{id})."""
        return self.requests.get(request_id)

    def pause(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.Pause(result=self._future()))

    def resume(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.Resume(result=self._future()))

    def toggle_pause(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.TogglePause(result=self._future()))

    def save_checkpoint(self, reason: str = "requested") -> asyncio.Future[Any]:
        return self._enqueue(cmd.SaveCheckpoint(result=self._future(), reason=reason))

    def stop(self, reason: str = "requested") -> asyncio.Future[Any]:
        """Stop at the next step boundary; a validation in progress ends at its next image."""
        self._stop_requested.set()
        return self._enqueue(cmd.Stop(result=self._future(), reason=reason))

    def apply_config(self, changes: dict[str, Any]) -> cmd.ConfigRequest:
        """Accept a live-config change (applied at the next step boundary) or refuse it now.

        It is checked against `pending_config`, so two changes that do not fit together are
        never both accepted: ConfigError if it is wrong on its own, LiveConfigConflict if it
        collides with a change accepted before it, StartOnlyKeyError, or CommandNotAvailable
        while stopping. Every producer comes here. `request.result` resolves with the applied
        values, or fails with the reason (also logged).
        """
        if self.phase in (Phase.STOPPING, Phase.STOPPED) or self._stop_requested.is_set():
            raise CommandNotAvailable("the run is stopping")
        pending = [(r.id, r.changes) for r in self._pending_config_requests()]
        checked = check_against_pending(self.config, self.pending_config, changes, pending)
        normalized = {key: getattr(checked, key) for key in changes}
        request = cmd.ConfigRequest(changes=normalized, result=self._future())
        request.result.add_done_callback(lambda done: self._settle_config_request(request, done))
        self._remember(request)
        self._enqueue(cmd.ApplyConfig(result=request.result, request=request))
        log.info(
            "config change %s accepted (request %s): applies at the next step boundary",
            describe_changes(normalized),
            request.id,
        )
        return request

    @property
    def pending_config(self) -> Any:
        """The config as it will be once every accepted, not yet applied change has applied.

        Derived from the request registry (one home for what is pending): the running config
        with the pending requests' changes on top, in the order they were accepted.
        """
        config = self.config
        for request in self._pending_config_requests():
            with contextlib.suppress(ConfigError):  # built on a change that failed: fails too
                config = check_live_changes(config, request.changes)
        return config

    def _pending_config_requests(self) -> list[cmd.ConfigRequest]:
        return [r for r in self.requests.values() if isinstance(r, cmd.ConfigRequest) and r.pending]

    def _settle_config_request(self, request: cmd.ConfigRequest, done: asyncio.Future[Any]) -> None:
        """Whatever ends the command (applied, refused, left over at shutdown) ends its request."""
        if not request.pending:
            return  # _apply_config has already said how it went
        request.step = self.store.progress.step
        if not done.cancelled() and done.exception() is None:
            request.status, request.applied = RequestStatus.DONE, done.result()
            return
        request.status = RequestStatus.FAILED
        request.error = "cancelled" if done.cancelled() else str(done.exception())
        log.warning(
            "config change %s (request %s) not applied: %s",
            describe_changes(request.changes),
            request.id,
            request.error,
        )

    @property
    def checkpoints_available(self) -> bool:
        return self.checkpointer is not None

    def add_service(self, service: Service) -> None:
        self.services.append(service)

    def on_hard_exit(self, hook: Callable[[], None]) -> None:
        """Run `hook` (e.g. restore the terminal) before a second Ctrl+C kills the process."""
        self._hard_exit_hooks.append(hook)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop at the next step boundary; a second one of either exits at once."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)

    def _on_signal(self, signum: int) -> None:
        self._signals_seen += 1
        name = signal.Signals(signum).name
        if self._signals_seen > 1:
            for hook in self._hard_exit_hooks:
                with contextlib.suppress(Exception):
                    hook()
            message = f"\nvsr_async: {name} again: exiting now, without a final checkpoint (every "
            message += "file on disk is whole: writes are atomic)\n"
            os.write(2, message.encode())
            os._exit(128 + signum)
        log.warning(
            "%s received: stopping%s with a final checkpoint; send it again to exit at once",
            name,
            " (interrupting the validation)" if self.phase is Phase.VALIDATING else "",
        )
        self.stop(reason=f"signal {name}")

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Train until MAX_STEPS, a stop command or a signal; returns the process exit code."""
        try:
            for service in self.services:
                await service.start()
            self.statistics.start()
            if self.worker.engine is None:
                await self.worker.start()  # model, optimizer and data, on the GPU thread
            await self.worker.call(self.worker.engine.ensure_batch_plan)  # "auto": the probe
            self._publish_runtime()
            self._restore_from(self.worker.engine.resumed)
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
        when the engine's have changed (read while the GPU thread is idle, between calls)."""
        engine = self.worker.engine
        if engine.runtime_version != self._runtime_version:
            self._runtime_version = engine.runtime_version
            self.store.set_extra(**engine.runtime_facts())

    def _restore_from(self, resumed: Any) -> None:
        """A resumed run keeps its run id, step, best quality and validation count."""
        if resumed is None:
            return
        self.store.restore(
            run_id=resumed.run_id,
            step=resumed.step,
            best_quality=resumed.best_quality,
            best_step=resumed.best_step,
            validation_count=resumed.validation_count,
        )
        log.info("resumed run %s at step %d", resumed.run_id, resumed.step)

    async def _loop(self) -> None:
        if self.store.progress.step >= self.config.MAX_STEPS:
            self._begin_stop(f"already at MAX_STEPS={self.config.MAX_STEPS}")
        while self.phase is not Phase.STOPPING:
            await self._handle_commands(block=self.phase is Phase.PAUSED)
            if self.phase is not Phase.RUNNING:
                continue
            result = await self.worker.train_step()
            self._publish_runtime()  # e.g. a batch plan reduced by an out-of-memory step
            self._publish_step(result)
            step = result.step
            if self.phase is Phase.RUNNING and validation_due(step, self.config.VAL_STEP_EVERY):
                await self._run_validation(Trigger.SCHEDULE, None)
            if checkpoint_due(step, self.config.SAVE_STEP_EVERY) and self.checkpointer is not None:
                await self.checkpointer.save("schedule")  # the write runs behind training
            if step >= self.config.MAX_STEPS:
                self._begin_stop(f"finished: MAX_STEPS={self.config.MAX_STEPS} reached")

    def _publish_step(self, result: StepResult) -> None:
        self.store.publish_step(result)
        if result.histograms is not None:
            self.tensorboard.log_histograms(result.step, result.histograms)
        if result.stats is None:
            return
        stats = result.stats
        sps = self.store.timing.seconds_per_step
        self.tensorboard.log_step(result, sps)
        log.info(
            "step %d/%d  loss %.5f  lr %.2e (%s)  %s",
            result.step,
            self.config.MAX_STEPS,
            stats.loss_total,
            result.learning_rate,
            result.lr_phase,
            f"{1 / sps:.2f} it/s" if sps else "-- it/s",
        )
        if stats.nonfinite_steps > self._nonfinite_reported:
            log.warning(
                "non-finite loss: %d step(s) skipped without an update up to step %d (%d in all)",
                stats.nonfinite_steps - self._nonfinite_reported,
                result.step,
                stats.nonfinite_steps,
            )
            self._nonfinite_reported = stats.nonfinite_steps
        if stats.nonfinite_streak >= self.config.NAN_LIMIT:
            log.error(
                "%d consecutive non-finite losses (NAN_LIMIT=%d): stopping with the last good "
                "weights",
                stats.nonfinite_streak,
                self.config.NAN_LIMIT,
            )
            self.exit_code = 1
            self._begin_stop(f"{stats.nonfinite_streak} consecutive non-finite losses")

    def _begin_stop(self, reason: str) -> None:
        if self.phase is not Phase.STOPPING:
            self.stop_reason = reason
            self.phase = Phase.STOPPING
            log.info("stopping: %s", reason)

    # --- commands ------------------------------------------------------------------------------

    async def _handle_commands(self, *, block: bool) -> None:
        """Execute queued commands; when `block` (paused), wait for at least one."""
        pending: list[cmd.Command] = []
        if block:
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
        except (CommandNotAvailable, VsrError) as exc:
            if not command.result.done():
                command.result.set_exception(exc)
                command.result.exception()  # the producer may not be waiting; mark retrieved
            return
        if isinstance(outcome, asyncio.Future):  # finished later (a checkpoint write)
            outcome.add_done_callback(lambda done: _settle(command.result, done))
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
                return self._set_paused(True)
            case cmd.Resume():
                return self._set_paused(False)
            case cmd.TogglePause():
                return self._set_paused(self.phase is not Phase.PAUSED)
            case cmd.SaveCheckpoint(reason=reason):
                return await self._save_checkpoint(reason)
            case cmd.Stop(reason=reason):
                self._begin_stop(reason)
                return "stopping"
            case cmd.ApplyConfig(request=request):
                return await self._apply_config(request)
        raise CommandNotAvailable(f"unknown command {command.name}")

    def _set_paused(self, paused: bool) -> str:
        if self.phase is Phase.STOPPING:
            raise CommandNotAvailable("the run is stopping")
        self.phase = Phase.PAUSED if paused else Phase.RUNNING
        self.store.set_training(paused=paused)
        log.info(
            "training %s at step %d", "paused" if paused else "resumed", self.store.progress.step
        )
        return "paused" if paused else "running"

    async def _save_checkpoint(self, reason: str) -> asyncio.Future[str]:
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
            failure = self._config_change_failed(request, changes, exc)
            if not isinstance(exc, ConfigError):  # the engine may hold part of it: undo
                await self.worker.apply_config(self.config)  # failing too is a bug: run stops
            raise failure from exc
        applied = {k: getattr(new_config, k) for k in changes}
        self.config = new_config
        if self.checkpointer is not None:
            self.checkpointer.apply_config(new_config)
        self.store.set_config_live(live_values(new_config))
        log.info("config changed at step %d: %s", self.store.progress.step, applied)
        # Listeners (runtime_config.json) run behind training; the shutdown awaits them.
        for listener in self.config_listeners:
            self._spawn(listener(new_config, applied, self.store.progress.step))
        request.step, request.applied = self.store.progress.step, applied
        request.status = RequestStatus.DONE
        return applied

    def _config_change_failed(
        self, request: cmd.ConfigRequest, changes: dict[str, Any], exc: Exception
    ) -> ConfigChangeFailed:
        """Log a change that could not be applied and fail its request (the SSE event and
        GET /api/requests/{id} show the same words)."""
        reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        failure = ConfigChangeFailed(changes, reason)
        step = self.store.progress.step
        log.error("%s (request %s, at step %d)", failure, request.id, step)
        request.step, request.error = step, str(failure)
        request.status = RequestStatus.FAILED
        return failure

    # --- validation ----------------------------------------------------------------------------

    async def _run_validation(self, trigger: Trigger, request: ValidationRequest | None) -> None:
        """Validate on the worker, publish to the store FIRST, then snapshot and hand it over."""
        if request is not None:
            request.status = RequestStatus.RUNNING
            if self._queued_validation is request:
                self._queued_validation = None
        if self._stop_requested.is_set():  # a stop is queued: do not start a validation
            self._fail_request(request, CommandNotAvailable("the run is stopping"))
            return
        previous = self.phase
        self.phase = Phase.VALIDATING
        self.store.validation_started(trigger.value)
        log.info("validation started at step %d (%s)", self.store.progress.step, trigger.value)
        try:
            result = await self.worker.validate(
                self.store.set_validation_progress, self._stop_requested.is_set
            )
        except ValidationInterrupted as exc:
            log.warning("%s: the run is stopping (an unfinished validation writes no file)", exc)
            self.store.validation_failed()
            self.phase = previous
            self._fail_request(request, CommandNotAvailable(f"{exc} by a stop"))
            return
        except Exception as exc:
            log.exception("validation failed")
            self.store.validation_failed()
            self.phase = previous
            self._fail_request(request, exc)
            return
        step = self.store.progress.step
        await self.worker.call(self.worker.engine.on_validation, step, result.quality_ki)
        self._publish_runtime()  # e.g. validation tiles after an out-of-memory clip
        improved = self.store.publish_validation(result, step=step, trigger=trigger.value)
        snapshot = self.store.snapshot()  # the results are in; training may go on after this
        written = self.statistics.submit(step, snapshot)
        self.phase = previous if self.phase is Phase.VALIDATING else self.phase
        self.tensorboard.log_validation(step, result)
        log.info(
            "validation at step %d (%s): quality LR %.2f%% -> output %.2f%% (improvement "
            "%+.2f%%), PSNR %.2f -> %.2f dB",
            step,
            trigger.value,
            result.quality_lr * 100,
            result.quality_ki * 100,
            result.quality_improvement * 100,
            result.psnr_lr_db,
            result.psnr_ki_db,
        )
        for listener in self.validation_listeners:
            await listener(step, result, improved)
        if request is not None:
            metrics = {
                k: snapshot[k]
                for k in (
                    "quality_lr_value",
                    "quality_ki_value",
                    "quality_improvement_value",
                    "psnr_lr_db",
                    "psnr_ki_db",
                    "ssim_lr",
                    "ssim_ki",
                    "validation_loss_value",
                )
            }
            self._spawn(self._finish_request(request, step, metrics, written))

    @staticmethod
    def _fail_request(request: ValidationRequest | None, exc: Exception) -> None:
        if request is None:
            return
        request.status, request.error = RequestStatus.FAILED, str(exc)
        if not request.result.done():
            request.result.set_exception(exc)
            request.result.exception()  # retrieved: the producer may not be waiting

    async def _finish_request(
        self,
        request: ValidationRequest,
        step: int,
        metrics: dict[str, Any],
        written: asyncio.Future[Path],
    ) -> None:
        """Resolve a request once its Statistik file is on disk (or its write failed)."""
        try:
            path = await written
            report = ValidationReport(step, request.trigger.value, metrics, path.name)
        except OSError as exc:
            report = ValidationReport(step, request.trigger.value, metrics, None, str(exc))
        request.report, request.status = report, RequestStatus.DONE
        if not request.result.done():
            request.result.set_result(report)

    def _remember(self, request: cmd.Request) -> None:
        """Keep the newest finished requests queryable; unfinished ones are never dropped (the
        pending config is derived from them)."""
        self.requests[request.id] = request
        excess = len(self.requests) - MAX_REQUESTS_KEPT
        if excess <= 0:
            return
        finished = (RequestStatus.DONE, RequestStatus.FAILED)
        oldest = [key for key, r in self.requests.items() if r.status in finished][:excess]
        for key in oldest:
            del self.requests[key]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Final checkpoint, flush statistics (bounded), close TensorBoard, stop services."""
        reason = self.stop_reason or "interrupted"
        self.phase = Phase.STOPPING
        self.store.set_training(active=False)
        started = time.monotonic()
        if self.checkpointer is not None and self.worker.engine is not None:
            try:
                await (await self.checkpointer.save("shutdown"))
            except Exception:
                log.exception("final checkpoint failed")
        if not await self.statistics.close(SHUTDOWN_WRITE_TIMEOUT_S):
            log.error("statistics not written for steps %s", self.statistics.pending_steps)
            self.exit_code = self.exit_code or 1
        if self._background:
            await asyncio.wait(self._background, timeout=SHUTDOWN_WRITE_TIMEOUT_S)
        self._fail_leftover_commands()
        await asyncio.to_thread(self.tensorboard.close)
        if self.checkpointer is not None:
            await self.checkpointer.close()
        await self.worker.close()
        self.store.mark_stopped(reason)
        self.phase = Phase.STOPPED
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        log.info("run stopped (%s) after %.1f s of shutdown", reason, time.monotonic() - started)
        self.finished.set()

    def _fail_leftover_commands(self) -> None:
        while not self.commands.empty():
            command = self.commands.get_nowait()
            self._pending_names.remove(command.name)
            if isinstance(command, cmd.RunValidation):
                command.request.status = RequestStatus.FAILED
                command.request.error = "the run stopped before this validation started"
                if not command.request.result.done():
                    command.request.result.set_exception(CommandNotAvailable("run stopped"))
                    command.request.result.exception()
            if not command.result.done():
                command.result.set_exception(CommandNotAvailable("the run stopped"))
                command.result.exception()
