"""Where a patch-layout dataset's validation images and their LR come from.

The predecessor's datasets often lack parts of `Val/`: the old generator's `Val/LR` was optional
(the same file name in `Patches/LR` was used instead), and the newer generator writes no
validation images at all. These are decisions, not errors, so each one is said as a notice:

- `Val/GT/x.png` without `Val/LR/x.png`: VAL_LR_MISSING says what to do (the training LR file of
  the same name, a bicubic LR made from the GT, or leave the image out);
- no `Val/GT` images: a fixed set of training samples is held out and validated on instead.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from dataclasses import dataclass
from pathlib import Path

from vsr_async.data.info import SkippedFile
from vsr_async.data.listing import image_names, optional_folder
from vsr_async.data.patch_folders import PatchFolders, PatchOptions
from vsr_async.errors import DatasetError

HOLDOUT_KEY = b"vsr_async hold-out v1"  # fixes the hold-out: the same names for every run
HOLDOUT_MAX_FRACTION = 10  # at most 1/10 of the training samples are held out


@dataclass
class ValPlan:
    """Validation as (name, GT path, LR path or None for bicubic), and training names left."""

    pairs: list[tuple[str, Path, Path | None]]
    train_names: list[str]
    notices: list[str]


def paired_names(
    folders: PatchFolders, lr_names: set[str], skipped: list[SkippedFile]
) -> list[str]:
    """Training GT names with a same-named LR file; the others go to `skipped`, not an error."""
    kept = []
    for name in image_names(folders.train_gt):
        if name in lr_names:
            kept.append(name)
        else:
            reason = f"no LR partner ({folders.show(folders.train_lr / name)} does not exist)"
            skipped.append(SkippedFile(folders.train_gt / name, reason))
    return kept


def plan_validation(
    folders: PatchFolders,
    train_names: list[str],
    train_lr_names: set[str],
    options: PatchOptions,
    skipped: list[SkippedFile],
) -> ValPlan:
    """Validation pairs by the rules in the module docstring; skipped images go to `skipped`."""
    val_gt = optional_folder(folders.val_gt)
    val_names = image_names(val_gt) if val_gt else []
    if not val_names:
        return _hold_out(folders, train_names, options.holdout_images)
    val_lr_names = set(image_names(folders.val_lr)) if optional_folder(folders.val_lr) else set()
    pairs: list[tuple[str, Path, Path | None]] = []
    from_training, made = [], 0
    for name in val_names:
        gt = folders.val_gt / name
        if name in val_lr_names:
            pairs.append((name, gt, folders.val_lr / name))
        elif options.val_lr_missing == "patches" and name in train_lr_names:
            pairs.append((name, gt, folders.train_lr / name))
            from_training.append(name)
        elif options.val_lr_missing == "bicubic":
            pairs.append((name, gt, None))
            made += 1
        else:
            skipped.append(SkippedFile(gt, _val_reason(folders, name, options)))
    if not pairs:
        raise DatasetError(
            folders.val_gt,
            f"none of its {len(val_names)} validation images has an LR partner "
            f"(VAL_LR_MISSING={options.val_lr_missing!r}); add {folders.show(folders.val_lr)}, "
            'or set VAL_LR_MISSING="bicubic" to make LR from the GT',
        )
    notices = []
    if from_training:
        notices.append(_fallback_notice(folders, from_training, set(train_names)))
    if made:
        notices.append(
            f"{made} validation image(s) have no {folders.show(folders.val_lr)} file: "
            'their LR is the bicubic downscale of the GT (VAL_LR_MISSING="bicubic"), the same '
            "for every frame, so validation shows no gain from neighbouring frames"
        )
    return ValPlan(pairs, train_names, notices)


def holdout_names(names: list[str], wanted: int) -> list[str]:
    """The names held out: the `wanted` (at most a tenth, at least one) with the smallest keyed
    hash. A name's rank depends only on the name, so the choice is the same in every run and
    on every machine, and survives added files except at the boundary."""
    count = min(wanted, max(1, len(names) // HOLDOUT_MAX_FRACTION))
    chosen = set(heapq.nsmallest(count, names, key=_rank))
    return [name for name in names if name in chosen]


def _rank(name: str) -> bytes:
    return hashlib.blake2b(os.fsencode(name), key=HOLDOUT_KEY, digest_size=16).digest()


def _hold_out(folders: PatchFolders, train_names: list[str], wanted: int) -> ValPlan:
    if len(train_names) < 2:
        raise DatasetError(
            folders.val_gt,
            f"no validation images, and only {len(train_names)} training sample(s), too few to "
            "hold one out for validation; put images in Val/GT (and Val/LR)",
        )
    held = holdout_names(train_names, wanted)
    held_set = set(held)
    pairs: list[tuple[str, Path, Path | None]] = [
        (n, folders.train_gt / n, folders.train_lr / n) for n in held
    ]
    notice = (
        f"{folders.show(folders.val_gt)} has no images: validating on {len(held)} training samples "
        f"held out of {folders.show(folders.train_gt)} (fixed by name, not trained on; "
        "VAL_HOLDOUT_IMAGES sets how many); put images in Val/GT to validate on your own"
    )
    return ValPlan(pairs, [n for n in train_names if n not in held_set], [notice])


def _fallback_notice(folders: PatchFolders, names: list[str], training: set[str]) -> str:
    overlap = sum(name in training for name in names)
    source = (
        f"{len(names)} validation image(s) have no {folders.show(folders.val_lr)} file and use "
    )
    source += f'the same name in {folders.show(folders.train_lr)} (VAL_LR_MISSING="patches")'
    if overlap:
        return (
            f"{source}; {overlap} of them are also training samples, so validation overlaps "
            'training (VAL_LR_MISSING="bicubic" makes their LR from Val/GT instead)'
        )
    return f"{source}; none of them is a training sample"


def _val_reason(folders: PatchFolders, name: str, options: PatchOptions) -> str:
    val_lr = folders.show(folders.val_lr / name)
    if options.val_lr_missing == "patches":
        train_lr = folders.show(folders.train_lr / name)
        return f"no LR partner (neither {val_lr} nor {train_lr} exists)"
    return f'no LR partner ({val_lr} does not exist; VAL_LR_MISSING="skip")'
