"""Layer activity (mean |activation| per block), summed on the device every step and read on
logging steps only: the models keep two buffers and share this one reader."""

from __future__ import annotations

from torch import Tensor


def read_activity_means(
    activity_sum: Tensor, activity_count: Tensor, names: list[str], reset: bool
) -> dict[str, float]:
    """Mean |activation| per name since the last reset; {} if nothing was tracked.

    The one host sync of the models: call it only on logging steps.
    """
    import torch

    count_and_sums = torch.cat([activity_count.to(activity_sum).view(1), activity_sum])
    values = count_and_sums.tolist()  # CPU-GPU sync, deliberately here and only here
    if reset:
        activity_sum.zero_()
        activity_count.zero_()
    count, sums = values[0], values[1:]
    if count == 0:
        return {}
    return {name: s / count for name, s in zip(names, sums, strict=True)}
