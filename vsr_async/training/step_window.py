"""On-device sums of one logging window: losses, gradient norm, non-finite steps.

Every step adds to tensors on the device (no sync); the logging step reads them all in one
transfer and starts a new window. They are part of a checkpoint, so a resumed run logs (and
adapts) exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

import torch
from torch import Tensor

from vsr_async.records import LossMeans

LOSS_VALUES = len(LossMeans._fields)  # the total, then one per LossTerm


class WindowMeans(NamedTuple):
    losses: LossMeans  # means over the finite steps
    grad_norm: float  # mean over the finite steps
    nonfinite_total: int
    nonfinite_streak: int
    extra: list[float]  # the caller's extra values, read in the same transfer


T = TypeVar("T")


class _Counters(NamedTuple, Generic[T]):
    """The window's scalars as `read` packs them (device tensors) and unpacks them (floats),
    after the loss sums and before the extras."""

    grad_norm_sum: T
    window_nonfinite: T
    nonfinite_total: T
    nonfinite_streak: T


class StepWindow:
    def __init__(
        self, device: torch.device, mean_over_ranks: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        # Under torchrun `read` averages the packed sums over the ranks (one all-reduce at the
        # logging cadence): each rank's losses are its own batch's, the rest agree already.
        self.mean_over_ranks = mean_over_ranks
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.term_sum = zeros(LOSS_VALUES)  # laid out as LossMeans
        self.grad_norm_sum = zeros(())
        self.window_nonfinite = zeros(())
        self.nonfinite_total = zeros(())
        self.nonfinite_streak = zeros(())
        self.steps = 0

    def add(self, terms: Tensor, grad_norm: Tensor, finite: Tensor) -> None:
        """Fold one step in (`terms`: [LOSS_VALUES], laid out as LossMeans); a non-finite step
        counts but does not pollute the means."""
        found_inf = (~finite).float()
        self.term_sum += torch.where(finite, terms, torch.zeros_like(terms))
        self.grad_norm_sum += torch.where(finite, grad_norm.float(), torch.zeros_like(grad_norm))
        self.nonfinite_total += found_inf
        self.nonfinite_streak = (self.nonfinite_streak + found_inf) * found_inf
        self.window_nonfinite += found_inf
        self.steps += 1

    def read(self, extra: Sequence[Tensor] = ()) -> WindowMeans:
        """The logging-cadence sync: one device→host transfer, then a fresh window."""
        return self._means(extra, reset=True)

    def peek(self, extra: Sequence[Tensor] = ()) -> WindowMeans:
        """The window's means so far, left open (a validation before the first logging step)."""
        return self._means(extra, reset=False)

    def _means(self, extra: Sequence[Tensor], *, reset: bool) -> WindowMeans:
        counters: _Counters[Tensor] = _Counters(
            self.grad_norm_sum, self.window_nonfinite, self.nonfinite_total, self.nonfinite_streak
        )
        packed = torch.cat(
            [
                self.term_sum,
                *(t.reshape(1) for t in counters),
                *(t.reshape(1).float() for t in extra),
            ]
        )
        if reset and self.mean_over_ranks is not None:  # `peek` stays local: no collective
            self.mean_over_ranks(packed)
        values = packed.tolist()  # device→host sync (logging cadence only)
        after_sums = LOSS_VALUES + len(_Counters._fields)
        sums = values[:LOSS_VALUES]
        read: _Counters[float] = _Counters._make(values[LOSS_VALUES:after_sums])
        finite_steps = max(self.steps - int(read.window_nonfinite), 1)
        if reset:
            self.term_sum.zero_()
            self.grad_norm_sum.zero_()
            self.window_nonfinite.zero_()
            self.steps = 0
        return WindowMeans(
            losses=LossMeans._make(v / finite_steps for v in sums),
            grad_norm=read.grad_norm_sum / finite_steps,
            nonfinite_total=int(read.nonfinite_total),
            nonfinite_streak=int(read.nonfinite_streak),
            extra=values[after_sums:],
        )

    def combine_ranks(self) -> None:
        """Under torchrun, at the last round: the open window's loss sums become the mean over
        the ranks (the rest agree already), so a checkpoint holds the whole job's window."""
        if self.mean_over_ranks is not None:
            self.mean_over_ranks(self.term_sum)

    def state_dict(self) -> dict[str, Tensor | int]:
        return {
            "term_sum": self.term_sum.clone(),
            "grad_norm_sum": self.grad_norm_sum.clone(),
            "window_nonfinite": self.window_nonfinite.clone(),
            "nonfinite_total": self.nonfinite_total.clone(),
            "nonfinite_streak": self.nonfinite_streak.clone(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        for name in (
            "term_sum",
            "grad_norm_sum",
            "window_nonfinite",
            "nonfinite_total",
            "nonfinite_streak",
        ):
            getattr(self, name).copy_(state[name])
        self.steps = int(state["steps"])
