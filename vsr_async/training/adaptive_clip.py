"""The adaptive gradient clip: a ring of recent gradient norms on the device, and at the logging
cadence a clip of their percentile times a margin, within [ADAPTIVE_CLIP_MIN, ADAPTIVE_CLIP_MAX].

Until MIN_CLIP_SAMPLES finite norms are in the ring the clip is INITIAL_GRAD_CLIP. `record` runs
every step and never reads a value back (no sync); `summary` hands its two numbers to the
adaptive system, which reads them with its own in one transfer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

MIN_CLIP_SAMPLES = 32  # finite gradient norms needed before the clip follows the history


class AdaptiveClip:
    def __init__(self, config: Any, device: torch.device) -> None:
        self.device = device
        self.value = float(config.INITIAL_GRAD_CLIP)  # a host float: clip_grad_norm_ takes it
        self.from_history = False
        self.recorded = 0  # record calls since the ring was (re)filled: the ring index
        self.norms = torch.full((config.ADAPTIVE_CLIP_HISTORY,), math.nan, device=device)

    def apply_config(self, config: Any) -> None:
        """A new INITIAL_GRAD_CLIP applies while the clip does not come from history; a new
        ADAPTIVE_CLIP_HISTORY keeps the newest norms."""
        if not (config.ADAPTIVE_GRAD_CLIP and self.from_history):
            self.value, self.from_history = float(config.INITIAL_GRAD_CLIP), False
        if self.norms.numel() != config.ADAPTIVE_CLIP_HISTORY:
            self._resize(config.ADAPTIVE_CLIP_HISTORY)

    def record(self, grad_norm: Tensor, finite: Tensor) -> None:
        """One step's norm into the ring (NaN for a non-finite step): device ops only."""
        usable = finite & torch.isfinite(grad_norm)
        slot = self.recorded % self.norms.numel()  # a host int: no sync
        self.norms[slot] = torch.where(usable, grad_norm.float(), math.nan)
        self.recorded += 1

    def summary(self, percentile: float) -> tuple[Tensor, Tensor]:
        """(the ring's `percentile`, its count of finite norms): 0-dim device tensors."""
        quantile = torch.nanquantile(self.norms, percentile / 100)
        return quantile, (~torch.isnan(self.norms)).sum().float()

    def adapt(self, config: Any, quantile: float, samples: float) -> None:
        """Clip = percentile of recent norms x margin, within [ADAPTIVE_CLIP_MIN, _MAX]."""
        if samples < MIN_CLIP_SAMPLES or not math.isfinite(quantile):
            return  # too little history yet: keep the current clip
        clip = quantile * config.ADAPTIVE_CLIP_MARGIN
        self.value = min(max(clip, config.ADAPTIVE_CLIP_MIN), config.ADAPTIVE_CLIP_MAX)
        self.from_history = True

    def reset(self, config: Any) -> None:
        """Back to INITIAL_GRAD_CLIP with an empty ring (else the next update restores the clip)."""
        self.value, self.from_history = float(config.INITIAL_GRAD_CLIP), False
        self.norms.fill_(math.nan)
        self.recorded = 0

    def _resize(self, size: int) -> None:
        """A new ring length keeps the newest norms, oldest first from slot 0."""
        ring, recorded = self.norms, self.recorded
        n = ring.numel()
        ordered = ring[:recorded] if recorded <= n else torch.roll(ring, -(recorded % n))
        kept = ordered[max(ordered.numel() - size, 0) :]
        self.norms = torch.full((size,), math.nan, device=self.device)
        self.norms[: kept.numel()] = kept
        self.recorded = kept.numel()

    # --- checkpoint: the adaptive state's clip entries -------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "grad_clip": self.value,
            "clip_from_history": self.from_history,
            # A copy (a checkpoint-time sync, not a per-step one): later steps must not alter it.
            "grad_norms": self.norms.detach().to("cpu", copy=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorded = int(state["recorded"])
        self.value = float(state["grad_clip"])
        self.from_history = bool(state["clip_from_history"])
        self.norms = state["grad_norms"].to(self.device, torch.float32, copy=True)
