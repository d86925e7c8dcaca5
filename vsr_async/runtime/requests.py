"""RequestRegistry: the validation and config requests of a run, by id (GET /api/requests/{id}).

It keeps finished requests queryable (the newest MAX_REQUESTS_KEPT), derives the pending config
from the accepted, not yet applied config changes, and settles, finishes or fails requests. The
supervisor decides when; this module only records how each request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigChangeFailed, ConfigError, describe_changes
from vsr_async.runtime import commands as cmd
from vsr_async.runtime.commands import (
    RequestStatus,
    Trigger,
    ValidationReport,
    ValidationRequest,
)
from vsr_async.runtime.live_config import check_against_pending, check_live_changes
from vsr_async.settings import Config

log = logging.getLogger(__name__)

MAX_REQUESTS_KEPT = 1000  # finished validation requests stay queryable (GET /api/requests/{id})


def settle(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    """Copy a finished future's outcome into another (marking the exception retrieved)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
        target.exception()
    else:
        target.set_result(source.result())


def fail_future(future: asyncio.Future[Any], exc: Exception) -> None:
    """Fail `future` unless done, marking the exception retrieved (nobody may be waiting)."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


class RequestRegistry:
    """Every validation and config request by id; `current_step` dates how each one ended."""

    def __init__(self, current_step: Callable[[], int]) -> None:
        self.requests: OrderedDict[str, cmd.Request] = OrderedDict()
        self.queued_validation: ValidationRequest | None = None  # one queued, not started
        self._current_step = current_step

    def get(self, request_id: str) -> cmd.Request | None:
        return self.requests.get(request_id)

    def remember(self, request: cmd.Request) -> None:
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

    # --- config requests -----------------------------------------------------------------------

    def pending_config_requests(self) -> list[cmd.ConfigRequest]:
        return [r for r in self.requests.values() if isinstance(r, cmd.ConfigRequest) and r.pending]

    def pending_config(self, config: Config) -> Config:
        """`config` with the pending requests' changes on top, in the order they were accepted."""
        for request in self.pending_config_requests():
            with contextlib.suppress(ConfigError):  # built on a change that failed: fails too
                config = check_live_changes(config, request.changes)
        return config

    def accept_config(
        self, config: Config, changes: dict[str, Any], result: asyncio.Future[Any]
    ) -> cmd.ConfigRequest:
        """A new request for `changes` if they fit `config` with every pending change on top
        (else ConfigError, LiveConfigConflict or StartOnlyKeyError, and nothing is recorded)."""
        pending = [(r.id, r.changes) for r in self.pending_config_requests()]
        checked = check_against_pending(config, self.pending_config(config), changes, pending)
        normalized = {key: getattr(checked, key) for key in changes}
        request = cmd.ConfigRequest(changes=normalized, result=result)
        request.result.add_done_callback(lambda done: self.settle_config_request(request, done))
        self.remember(request)
        log.info(
            "config change %s accepted (request %s): applies at the next step boundary",
            describe_changes(normalized),
            request.id,
        )
        return request

    def settle_config_request(self, request: cmd.ConfigRequest, done: asyncio.Future[Any]) -> None:
        """Whatever ends the command (applied, refused, left over at shutdown) ends its request."""
        if not request.pending:
            return  # the supervisor has already said how it went
        request.step = self._current_step()
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

    def config_applied(self, request: cmd.ConfigRequest, applied: dict[str, Any]) -> None:
        request.step, request.applied = self._current_step(), applied
        request.status = RequestStatus.DONE

    def config_failed(
        self, request: cmd.ConfigRequest, changes: dict[str, Any], exc: Exception
    ) -> ConfigChangeFailed:
        """Log a change that could not be applied and fail its request (the SSE event and
        GET /api/requests/{id} show the same words)."""
        reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        failure = ConfigChangeFailed(changes, reason)
        step = self._current_step()
        log.error("%s (request %s, at step %d)", failure, request.id, step)
        request.step, request.error = step, str(failure)
        request.status = RequestStatus.FAILED
        return failure

    # --- validation requests -------------------------------------------------------------------

    def validation_request(
        self, trigger: Trigger, result: asyncio.Future[Any]
    ) -> tuple[ValidationRequest, bool]:
        """The queued, not started request if there is one (False), else a new one (True)."""
        queued = self.queued_validation
        if queued is not None and queued.status is RequestStatus.QUEUED:
            return queued, False
        request = ValidationRequest(trigger=trigger, result=result)
        self.remember(request)
        self.queued_validation = request
        return request, True

    def validation_started(self, request: ValidationRequest) -> None:
        request.status = RequestStatus.RUNNING
        if self.queued_validation is request:
            self.queued_validation = None

    @staticmethod
    def fail(request: ValidationRequest | None, exc: Exception, error: str | None = None) -> None:
        if request is None:
            return
        request.status, request.error = RequestStatus.FAILED, error or str(exc)
        fail_future(request.result, exc)

    @staticmethod
    async def finish(
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
