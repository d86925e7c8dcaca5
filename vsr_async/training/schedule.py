"""Learning-rate schedule: linear warmup from 10**LR_EXPONENT to MAX_LR, then cosine to MIN_LR.

Pure Python on the host (the optimizer gets a float each step: no device work, no sync). The
adaptive system can boost the rate for a number of steps; the boost is part of the schedule so
nothing else can overwrite it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vsr_async.settings import Config

WARMUP, COSINE, BOOST, FINAL = "Warmup", "Cosine", "Boost", "Final"


@dataclass
class LRSchedule:
    start_lr: float
    max_lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    boost_factor: float = 1.0
    boost_until: int = -1  # the boost applies to steps < boost_until

    @classmethod
    def from_config(cls, config: Config) -> LRSchedule:
        return cls(
            start_lr=min(10.0**config.LR_EXPONENT, config.MAX_LR),
            max_lr=config.MAX_LR,
            min_lr=config.MIN_LR,
            warmup_steps=config.WARMUP_STEPS,
            max_steps=config.MAX_STEPS,
        )

    def update_bounds(self, config: Config) -> None:
        """Live config change of MAX_LR / MIN_LR (takes effect at the next step)."""
        self.max_lr, self.min_lr = config.MAX_LR, config.MIN_LR
        self.start_lr = min(10.0**config.LR_EXPONENT, config.MAX_LR)

    def base_lr(self, step: int) -> float:
        """The rate for optimizer step `step` (0-based) without any boost."""
        if step < self.warmup_steps:
            return self.start_lr + (self.max_lr - self.start_lr) * step / self.warmup_steps
        span = max(self.max_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + (self.max_lr - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def boosting(self, step: int) -> bool:
        return step < self.boost_until

    def lr(self, step: int) -> float:
        base = self.base_lr(step)
        if self.boosting(step):
            return min(base * self.boost_factor, self.max_lr)
        return base

    def phase(self, step: int) -> str:
        if self.boosting(step):
            return BOOST
        if step < self.warmup_steps:
            return WARMUP
        return FINAL if step >= self.max_steps else COSINE

    def start_boost(self, step: int, factor: float, duration: int) -> None:
        self.boost_factor, self.boost_until = factor, step + duration

    def state_dict(self) -> dict[str, float | int]:
        return {"boost_factor": self.boost_factor, "boost_until": self.boost_until}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.boost_factor = float(state["boost_factor"])
        self.boost_until = int(state["boost_until"])
