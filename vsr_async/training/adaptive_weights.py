"""Loss weights that follow the output's sharpness: blurry output moves the sharpening terms
(MS, gradient, perceptual) up and L1 down, oversharp output the reverse.

Every weight is its config target times a multiplier, so a live target change moves the anchor
at once (the user's decision) while these moves stay within ADAPTIVE_WEIGHT_MAX_STEP of the target
per decision, between the floors and ceilings. `record` runs every step on the device (no sync);
the adaptive system reads the window's sums with its other numbers and decides here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vsr_async.records import LossTerm, LossWeights

SHARPENING = (LossTerm.MS, LossTerm.GRADIENT, LossTerm.PERCEPTUAL)  # up when the output is blurry


class AdaptiveWeights:
    def __init__(self, config: Any, device: torch.device, *, perceptual_on: bool) -> None:
        self.device = device
        self.perceptual_on = perceptual_on  # fixed at start (the network is loaded or not)
        self.multipliers = dict.fromkeys(LossTerm, 1.0)
        self.cooldown_until = 0  # no move before this step
        self.sharpness_since = 0  # step the sharpness window was last cleared
        self.sharpness_history: list[list[float]] = []  # [update step, sum, count] per update
        # device sums of the current logging window, written by record
        self.sharpness_sum = torch.zeros((), device=device)
        self.sharpness_count = torch.zeros((), device=device)
        self.apply_config(config)

    def apply_config(self, config: Any) -> None:
        """Targets, bounds and the switch apply at once (explicit user decisions)."""
        self.config = config
        if not config.ADAPTIVE_LOSS_WEIGHTS:
            self.multipliers = dict.fromkeys(LossTerm, 1.0)
        self.multipliers = {t: self._clamp(t, m) for t, m in self.multipliers.items()}
        self.weights = self._current_weights()

    def record(self, sharpness: Tensor, finite: Tensor) -> None:
        """One step's sharpness ratio into the window sums (a non-finite step counts not)."""
        ok = finite & torch.isfinite(sharpness)
        self.sharpness_sum += torch.where(ok, sharpness.float(), 0.0)
        self.sharpness_count += ok.float()

    def window_sums(self) -> tuple[Tensor, Tensor]:
        """(sum, count) of this logging window's sharpness: 0-dim device tensors."""
        return self.sharpness_sum, self.sharpness_count

    def close_window(self, step: int, total: float, count: float, *, keep: bool) -> None:
        """The logging window's sums were read: start a new one; `keep` adds them to history."""
        self.sharpness_sum.zero_()
        self.sharpness_count.zero_()
        if keep:
            self.sharpness_history.append([float(step), total, count])

    def prune(self, cutoff: int) -> None:
        """Keep the updates whose interval ends after step `cutoff`."""
        self.sharpness_history = [e for e in self.sharpness_history if e[0] > cutoff]

    def cooldown_remaining(self, step: int) -> int:
        return max(self.cooldown_until - step, 0)

    def move(self, step: int, *, aggressive: bool) -> str | None:
        """Blurry output (ratio < 1 − tol): MS/gradient/perceptual up, L1 down; oversharp: the
        reverse. One move of at most ADAPTIVE_WEIGHT_MAX_STEP per full window and cooldown (half
        the cooldown when `aggressive`). Returns what it did, or None when nothing moved."""
        cfg = self.config
        if step < self.cooldown_until:
            return None
        targets = self._targets()
        sharp_terms = [t for t in SHARPENING if targets[t] > 0]
        if not sharp_terms:
            return None  # nothing that sharpens is on: lowering L1 alone would only rescale
        ratio = self._window_sharpness(step)
        if ratio is None:
            return None
        tol, max_step = cfg.ADAPTIVE_SHARPNESS_TOLERANCE, cfg.ADAPTIVE_WEIGHT_MAX_STEP
        if ratio < 1 - tol:
            delta, reason = min(1 - ratio, max_step), "blurry"
        elif ratio > 1 + tol:
            delta, reason = -min(ratio - 1, max_step), "oversharp"
        else:
            return None
        before = dict(self.multipliers)
        for term in sharp_terms:
            self.multipliers[term] = self._clamp(term, self.multipliers[term] + delta)
        l1 = LossTerm.L1
        if targets[l1] > 0:
            self.multipliers[l1] = self._clamp(l1, self.multipliers[l1] - delta)
        if self.multipliers == before:
            return None  # every weight already at its bound: no move, no cooldown
        cooldown = cfg.ADAPTIVE_WEIGHT_COOLDOWN_STEPS
        self.cooldown_until = step + (cooldown // 2 if aggressive else cooldown)
        self._clear_window(step)  # judge the new weights on their own data
        self.weights = w = self._current_weights()
        return (
            f"sharpness {ratio:.3f} ({reason}): weights l1 {w.l1:.4g}, ms {w.ms:.4g}, "
            f"gradient {w.gradient:.4g}, perceptual {w.perceptual:.4g}"
        )

    def reset(self, step: int) -> None:
        """Back to the targets, a fresh window from `step`, no cooldown left."""
        self.multipliers = dict.fromkeys(LossTerm, 1.0)
        self.weights = self._current_weights()
        self._clear_window(step)
        self.cooldown_until = step

    # --- helpers -------------------------------------------------------------------------------

    def _targets(self) -> dict[LossTerm, float]:
        targets = LossWeights.from_config(self.config)
        off = () if self.perceptual_on else (LossTerm.PERCEPTUAL,)
        return {t: 0.0 if t in off else targets.of(t) for t in LossTerm}

    def _clamp(self, term: LossTerm, multiplier: float) -> float:
        """Floors and ceilings, as fractions of the target: L1 in [ADAPTIVE_L1_FLOOR, 1], the
        others in [ADAPTIVE_WEIGHT_FLOOR, ADAPTIVE_WEIGHT_CEILING]."""
        cfg = self.config
        if term is LossTerm.L1:
            lo, hi = cfg.ADAPTIVE_L1_FLOOR, 1.0
        else:
            lo, hi = cfg.ADAPTIVE_WEIGHT_FLOOR, cfg.ADAPTIVE_WEIGHT_CEILING
        return min(max(multiplier, lo), hi)

    def _current_weights(self) -> LossWeights:
        targets, m = self._targets(), self.multipliers
        # 12 significant digits: the panel shows 0.11, not 0.11000000000000001
        return LossWeights(**{t.value: float(f"{targets[t] * m[t]:.12g}") for t in LossTerm})

    def _window_sharpness(self, step: int) -> float | None:
        """Mean sharpness ratio over the window, or None before a full window since the last
        move (or when every step in it was non-finite)."""
        if step - self.sharpness_since < self.config.ADAPTIVE_WINDOW_STEPS:
            return None
        total = sum(entry[1] for entry in self.sharpness_history)
        count = sum(entry[2] for entry in self.sharpness_history)
        return total / count if count > 0 else None

    def _clear_window(self, step: int) -> None:
        self.sharpness_history, self.sharpness_since = [], step

    # --- checkpoint: the adaptive state's weight entries -----------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "multipliers": [self.multipliers[t] for t in LossTerm],
            "cooldown_until": self.cooldown_until,
            "sharpness_since": self.sharpness_since,
            "sharpness_history": [list(e) for e in self.sharpness_history],
            # Copies (a checkpoint-time sync, not a per-step one): later steps must not alter them.
            "sharpness_sum": self.sharpness_sum.detach().to("cpu", copy=True),
            "sharpness_count": self.sharpness_count.detach().to("cpu", copy=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        multipliers = (float(m) for m in state["multipliers"])
        self.multipliers = dict(zip(LossTerm, multipliers, strict=True))
        self.cooldown_until = int(state["cooldown_until"])
        self.sharpness_since = int(state["sharpness_since"])
        self.sharpness_history = [[float(v) for v in e] for e in state["sharpness_history"]]
        self.sharpness_sum = state["sharpness_sum"].to(self.device, torch.float32, copy=True)
        self.sharpness_count = state["sharpness_count"].to(self.device, torch.float32, copy=True)
