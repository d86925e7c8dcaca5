"""The store's typed records: where the run is (`Progress`), how long a training step takes
(`Timing`, from which the ETAs come), and the latest validation (`ValidationState`).

Plain mutable dataclasses, written only by the store on the event-loop thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vsr_async.records import ValidationResult


@dataclass
class Progress:
    step: int = 0
    step_max: int = 0
    epoch: int = 0
    epoch_step: int = 0
    epoch_steps_total: int = 0
    learning_rate: float | None = None
    lr_phase: str | None = None


@dataclass
class Timing:
    """Training-step time only: validation and pauses are not steps (ETA must not count them)."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    last_step_at: float | None = None

    def step_done(self, now: float) -> None:
        if self.last_step_at is not None:
            self.window.append(now - self.last_step_at)
        self.last_step_at = now

    def interrupt(self) -> None:
        """A pause or validation: the next step's duration starts when training resumes."""
        self.last_step_at = None

    def resume(self, now: float) -> None:
        """Training starts or goes on after a pause: the next step's duration starts now."""
        self.last_step_at = now

    @property
    def seconds_per_step(self) -> float | None:
        return sum(self.window) / len(self.window) if self.window else None


@dataclass
class ValidationState:
    result: ValidationResult | None = None
    step: int | None = None
    trigger: str | None = None
    count: int = 0
    validated_at: str | None = None
    running: bool = False
    progress: float = 0.0
    best_quality: float | None = None
    best_step: int | None = None
