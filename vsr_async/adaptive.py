"""Adaptive loss weights and gradient clipping (placeholder until the adaptive system lands).

Reports mode "Off" honestly: weights stay at the config's targets and the clip at
INITIAL_GRAD_CLIP.
"""

from __future__ import annotations

from typing import Any

from vsr_async.reports import AdaptiveReport, LossWeights


class AdaptiveSystem:
    def __init__(self, config: Any) -> None:
        self.apply_config(config)

    def apply_config(self, config: Any) -> None:
        self.weights = LossWeights.from_config(config)
        self.grad_clip = config.INITIAL_GRAD_CLIP

    def report(self) -> AdaptiveReport:
        return AdaptiveReport(
            mode="Off",
            is_cooldown=False,
            cooldown_remaining=0,
            plateau_counter=0,
            lr_boost_available=False,
            perceptual_trend=0.0,
        )
