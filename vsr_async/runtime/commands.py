"""Commands: requests from the keyboard, HTTP and signals, as plain data on one asyncio.Queue.

Producers only enqueue; the supervisor executes each at the next step boundary and resolves its
future. Nothing here touches the model, the worker or the store.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class Trigger(enum.StrEnum):
    """Who asked for a validation (written to `validation_trigger`)."""

    SCHEDULE = "schedule"
    KEYBOARD = "keyboard"
    WEB = "web"


class Phase(enum.Enum):
    """Where the run is; only the supervisor changes it."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    VALIDATING = "validating"
    STOPPING = "stopping"
    STOPPED = "stopped"


class RequestStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ValidationReport:
    """What a finished validation request resolves to."""

    step: int
    trigger: str
    metrics: dict[str, Any]
    statistics_file: str | None  # None if the write failed (see `statistics_error`)
    statistics_error: str | None = None


@dataclass(eq=False)
class ValidationRequest:
    """A validation someone asked for; coalesced while queued and not yet started."""

    trigger: Trigger
    result: asyncio.Future[ValidationReport]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: RequestStatus = RequestStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    report: ValidationReport | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        report = self.report
        return {
            "request_id": self.id,
            "kind": "validation",
            "status": self.status.value,
            "trigger": self.trigger.value,
            "step": report.step if report else None,
            "metrics": report.metrics if report else None,
            "statistics_file": report.statistics_file if report else None,
            "statistics_error": report.statistics_error if report else None,
            "error": self.error,
        }


@dataclass(eq=False)
class ConfigRequest:
    """A live-config change someone asked for (`PATCH /api/config`).

    Accepted only if it fits the config as it will be once every earlier accepted change has
    applied; `result` (the ApplyConfig command's future) resolves with the applied values.
    """

    changes: dict[str, Any]  # normalized values, as validated when accepted
    result: asyncio.Future[dict[str, Any]]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: RequestStatus = RequestStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    step: int | None = None  # the step after which it applied (or failed)
    applied: dict[str, Any] | None = None
    error: str | None = None

    @property
    def pending(self) -> bool:
        """Accepted and not yet applied or failed: part of the pending config."""
        return self.status in (RequestStatus.QUEUED, RequestStatus.RUNNING)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.id,
            "kind": "config",
            "status": self.status.value,
            "changes": self.changes,
            "applied": self.applied,
            "step": self.step,
            "error": self.error,
        }


Request = ValidationRequest | ConfigRequest  # what GET /api/requests/{id} can answer


@dataclass(frozen=True)
class Command:
    """Base: every command carries a future the supervisor resolves with its outcome."""

    result: asyncio.Future[Any]

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class RunValidation(Command):
    request: ValidationRequest


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class TogglePause(Command):
    pass


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    reason: str = "requested"


@dataclass(frozen=True)
class Stop(Command):
    reason: str = "requested"


@dataclass(frozen=True)
class ApplyConfig(Command):
    """Carries an accepted ConfigRequest (its `result` is the request's future)."""

    request: ConfigRequest
