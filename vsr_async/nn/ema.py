"""EMA weights: a shadow copy of the model, updated on the device after every optimizer step.

Validation uses it when EMA_DECAY > 0 (smoother weights, usually a little better quality).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EmaWeights:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema: list[torch.Tensor] = list(self.model.parameters())  # as _foreach_* takes them
        self._live: list[torch.Tensor] = list(model.parameters())

    @torch.no_grad()
    def update(self) -> None:
        """ema ← ema + (1 − decay)·(live − ema): one fused device op, no host sync."""
        torch._foreach_lerp_(self._ema, self._live, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
