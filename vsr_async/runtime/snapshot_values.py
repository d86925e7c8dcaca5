"""Snapshot values built from the records the engine hands up: a validation image's entry, the
Y-channel means, the layer activity map (in the predecessor's names for its model), and the job's
keys taken from the runtime facts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypedDict, cast

from vsr_async.records import ImageMetrics, ValidationResult
from vsr_async.runtime.snapshot import ValidationImage


def image_entry(image: ImageMetrics) -> ValidationImage:
    """One `validation_images` entry (the dataclass's fields are the entry's keys)."""
    return cast(ValidationImage, image.to_dict())


class YChannelKeys(TypedDict):
    """The snapshot's Y-channel keys (a part of `Snapshot`, filled by `y_channel_keys`)."""

    psnr_y_lr_db: float | None
    psnr_y_ki_db: float | None
    psnr_y_gain_db: float | None
    ssim_y_lr: float | None
    ssim_y_ki: float | None


def y_channel_keys(result: ValidationResult | None) -> YChannelKeys:
    """The Y-channel means of the latest validation (None before the first)."""
    r = result
    return {
        "psnr_y_lr_db": r.psnr_y_lr_db if r else None,
        "psnr_y_ki_db": r.psnr_y_ki_db if r else None,
        "psnr_y_gain_db": r.psnr_y_gain_db if r else None,
        "ssim_y_lr": r.ssim_y_lr if r else None,
        "ssim_y_ki": r.ssim_y_ki if r else None,
    }


_BLOCK_NAME = re.compile(r"(Backward|Forward)_Block_0*(\d+)")


def predecessor_activity_name(name: str) -> str:
    """The predecessor's `layer_activity_map` entry name for one of its model's blocks, as its
    Statistik files had them: `Backward_Block_01` → `Backward 1`, `Backward_Fuse` → `Backward
    Fuse`, `Final_Fusion` → `Final Fusion` (its TensorBoard keeps the underscore names)."""
    block = _BLOCK_NAME.fullmatch(name)
    if block is not None:
        return f"{block[1]} {int(block[2])}"
    return name.replace("_", " ")


def activity_keys(
    activity: Mapping[str, float], predecessor_names: bool
) -> tuple[dict[str, float | None], float | None]:
    """`layer_activity_map` (in the predecessor's names for its model) and its peak."""
    entries: dict[str, float | None] = {
        (predecessor_activity_name(name) if predecessor_names else name): value
        for name, value in activity.items()
    }
    return entries, max((v for v in activity.values() if math.isfinite(v)), default=None)


class JobKeys(TypedDict):
    """The snapshot's keys about the job (a part of `Snapshot`, filled by `job_keys`): runtime
    facts the engine reports, shown as keys of their own rather than inside `runtime`."""

    world_size: int | None
    global_batch: int | None


def job_keys(facts: Mapping[str, Any]) -> JobKeys:
    """World size and global batch from the runtime facts (None before the engine reports)."""
    return {"world_size": facts.get("world_size"), "global_batch": facts.get("global_batch")}


def runtime_entries(facts: Mapping[str, Any]) -> dict[str, Any]:
    """`runtime`: the facts that have no key of their own, so each fact is in a snapshot once."""
    return {name: value for name, value in facts.items() if name not in JobKeys.__annotations__}
