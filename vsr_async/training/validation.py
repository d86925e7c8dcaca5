"""Validation: PSNR, SSIM and quality of the bicubic upscale ("LR") and of the model output
("KI") against the GT, per image, plus the LR | output | GT strips for the panel. PSNR and SSIM
also on the Y channel with SCALE pixels cropped at the border, as papers report them.

Plain synchronous code for the GPU thread; one device→host transfer per image. Under torchrun
the images are split over the ranks (`ValShard`) and the per-image records gathered once; one
function validates an image and one assembles the result, for one process and for many.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_async.errors import ValidationInterrupted, VsrError, one_line
from vsr_async.metrics import SSIM_WINDOW, psnr, psnr_y, quality, ssim, ssim_y
from vsr_async.nn.tiling import TiledInference
from vsr_async.records import ImageMetrics, ValidationResult

STRIP_IMAGES = 8  # validation images that get an LR | output | GT strip (panel, TensorBoard)


def bicubic_upscale(frame: Tensor, scale: int) -> Tensor:
    """The "LR" reference: bicubic upscaling of the centre LR frame, [B,3,h,w] → [B,3,H,W]."""
    return F.interpolate(frame, scale_factor=scale, mode="bicubic", align_corners=False)


def y_channel_scores(lr_up: Tensor, sr: Tensor, gt: Tensor, border: int) -> Tensor:
    """[PSNR-Y LR, PSNR-Y KI, SSIM-Y LR, SSIM-Y KI] of one image ([1,3,H,W] each) on the device,
    `border` pixels cropped; NaN where the image is too small for the crop (or for SSIM's
    window after it)."""
    h, w = gt.shape[-2:]
    nan = torch.full((), float("nan"), device=gt.device)
    inner = min(h, w) - 2 * border
    p_lr, p_ki = (
        (psnr_y(lr_up, gt, border)[0], psnr_y(sr, gt, border)[0]) if inner > 0 else (nan, nan)
    )
    if inner >= SSIM_WINDOW:
        s_lr, s_ki = ssim_y(lr_up, gt, border)[0], ssim_y(sr, gt, border)[0]
    else:
        s_lr, s_ki = nan, nan
    return torch.stack([p_lr, p_ki, s_lr, s_ki])


def to_strip(lr_up: Tensor, sr: Tensor, gt: Tensor) -> np.ndarray:
    """LR | output | GT side by side as uint8 HxWx3, for the panel and TensorBoard."""
    row = torch.cat([lr_up, sr, gt], dim=-1)[0].clamp(0, 1)  # [3, H, 3W]
    return (row * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@dataclass(frozen=True)
class ValShard:
    """This process's part of a validation spread over `world_size` torchrun ranks: rank r
    validates the images r, r+W, r+2W, ... and every rank assembles the whole result.

    `gather(obj)` returns every rank's `obj`, indexed by rank; it is a collective (every rank
    calls it, the same number of times), e.g. `torch.distributed.all_gather_object` on a CPU
    gloo group. A validation calls it exactly once, whatever exception its share raises."""

    rank: int
    world_size: int
    gather: Callable[[Any], list[Any]]

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")


@dataclass(frozen=True)
class ImageRecord:
    """One validated image, what a rank sends to the others (picklable, plain floats)."""

    index: int  # position in the validation set
    metrics: ImageMetrics
    l1: float
    strip: np.ndarray | None  # for the first STRIP_IMAGES images only


@dataclass(frozen=True)
class _RankFailure:
    """Sent instead of the records by a rank whose share failed, so the others fail too (and
    nobody waits in a collective the failed rank never reaches)."""

    rank: int
    message: str
    user_error: bool  # a VsrError (the user can fix it), else a bug


def validate_image(
    model: nn.Module,
    index: int,
    sample: tuple[str, Tensor, Tensor],
    *,
    device: torch.device,
    scale: int,
    num_frames: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    tiling: TiledInference,
) -> ImageRecord:
    """Metrics, L1 and (for the first STRIP_IMAGES) the strip of validation image `index`."""
    name, lr_frames, gt = sample
    lr_frames = lr_frames.unsqueeze(0).to(device)  # [1, T, 3, h, w]
    gt = gt.unsqueeze(0).to(device)  # [1, 3, H, W]
    with autocast():
        sr = tiling(model, lr_frames, scale=scale, name=name)  # [1, 3, H, W]
    sr = sr.float().clamp(0, 1)  # metrics on the clamped output (DESIGN §3)
    lr_up = bicubic_upscale(lr_frames[:, num_frames // 2].float(), scale).clamp(0, 1)
    values = torch.cat(
        [
            torch.stack(
                [
                    psnr(lr_up, gt)[0],
                    psnr(sr, gt)[0],
                    ssim(lr_up, gt)[0],
                    ssim(sr, gt)[0],
                    F.l1_loss(sr, gt),
                ]
            ),
            y_channel_scores(lr_up, sr, gt, border=scale),
        ]
    ).tolist()  # one sync per image
    p_lr, p_ki, s_lr, s_ki, l1, py_lr, py_ki, sy_lr, sy_ki = values
    metrics = ImageMetrics(
        name=name,
        psnr_lr_db=p_lr,
        psnr_ki_db=p_ki,
        ssim_lr=s_lr,
        ssim_ki=s_ki,
        quality_lr=float(quality(p_lr, s_lr)),
        quality_ki=float(quality(p_ki, s_ki)),
        psnr_y_lr_db=py_lr,
        psnr_y_ki_db=py_ki,
        ssim_y_lr=sy_lr,
        ssim_y_ki=sy_ki,
    )
    strip = to_strip(lr_up, sr, gt) if index < STRIP_IMAGES else None
    return ImageRecord(index, metrics, l1, strip)


def assemble(records: Sequence[ImageRecord], *, started: float, used_ema: bool) -> ValidationResult:
    """The result of records in index order; the one place the per-image numbers are combined,
    so a sharded validation sums the losses in the same order as a single process."""
    return ValidationResult(
        images=tuple(r.metrics for r in records),
        loss=sum(r.l1 for r in records) / len(records),
        duration_s=time.perf_counter() - started,
        used_ema=used_ema,
        strips=tuple(r.strip for r in records if r.strip is not None),
    )


def validate_agreeing(
    shard: ValShard,
    one_image: Callable[[int], ImageRecord],
    count: int,
    should_stop: Callable[[], bool],
    progress: Callable[[float], None],
) -> list[ImageRecord]:
    """This rank's share, image slot by image slot; before each slot the ranks agree (one small
    gather) whether any of them was asked to stop or failed, so all of them interrupt at the same
    slot (`ValidationInterrupted`) or end early together; a failure is raised here and sent to the
    others by `gather_records`. Every rank takes part in every slot, with an image or not."""
    slots = -(-count // shard.world_size)
    mine = len(range(shard.rank, count, shard.world_size))
    records: list[ImageRecord] = []
    failure: Exception | None = None
    for slot in range(slots):
        votes = shard.gather((should_stop(), failure is not None))
        if any(failed for _, failed in votes):
            break
        if any(stop for stop, _ in votes):
            raise ValidationInterrupted(slot * shard.world_size, count)
        i = shard.rank + slot * shard.world_size
        if i < count:
            try:
                records.append(one_image(i))
            except Exception as exc:  # the others learn of it at the next slot
                failure = exc
            progress(len(records) / mine)
    if failure is not None:
        raise failure
    return records


def gather_records(
    shard: ValShard, validate_share: Callable[[], list[ImageRecord]], count: int
) -> list[ImageRecord]:
    """Every rank's records of a validation of `count` images, in index order. The share's
    failure is sent in their place and raised on every rank after the one gather."""
    error: Exception | None = None
    mine: list[ImageRecord] | _RankFailure
    try:
        mine = validate_share()
    except ValidationInterrupted:
        raise  # every rank was interrupted at the same slot: none gathers
    except Exception as exc:  # raised below, after the collective
        error = exc
        user_error = isinstance(exc, VsrError)
        text = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
        mine = _RankFailure(shard.rank, one_line(text), user_error)
    parts = shard.gather(mine)
    if error is not None:
        raise error
    for part in parts:
        if isinstance(part, _RankFailure):
            message = f"validation failed on rank {part.rank}: {part.message}"
            raise VsrError(message) if part.user_error else RuntimeError(message)
    records = sorted((r for part in parts for r in part), key=lambda r: r.index)
    if [r.index for r in records] != list(range(count)):
        raise RuntimeError(
            f"validation shards of {len(parts)} ranks do not cover the {count} images once each"
        )
    return records


@torch.inference_mode()
def run_validation(
    model: nn.Module,
    val_set: Any,
    *,
    device: torch.device,
    scale: int,
    num_frames: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    progress: Callable[[float], None] = lambda fraction: None,
    should_stop: Callable[[], bool] = lambda: False,
    used_ema: bool = False,
    tiling: TiledInference | None = None,
    shard: ValShard | None = None,
) -> ValidationResult:
    """Metrics of every validation clip; one that runs out of device memory is restored in
    tiles (`tiling` remembers the tiling across calls; a fresh one if None).

    `should_stop` is asked before every image, so a stop never waits for the whole set; it
    raises `ValidationInterrupted`.

    With a `shard` of several ranks, this rank validates its share (`progress` is the fraction
    of it, `duration_s` this rank's wall time), the records are gathered, and every rank returns
    the result a single process would, bit for bit (given the same weights and deterministic
    kernels on every rank). The ranks agree on `should_stop` (any rank's) before each image
    slot, so a stop interrupts every rank at the same image. A rank whose share fails raises its
    error and the others raise "validation failed on rank r: ..."."""
    tiling = tiling if tiling is not None else TiledInference()
    started = time.perf_counter()
    count = len(val_set)
    shard = shard if shard is not None and shard.world_size > 1 else None
    indices = range(count) if shard is None else range(shard.rank, count, shard.world_size)

    def one_image(i: int) -> ImageRecord:
        return validate_image(
            model,
            i,
            val_set[i],
            device=device,
            scale=scale,
            num_frames=num_frames,
            autocast=autocast,
            tiling=tiling,
        )

    def validate_share() -> list[ImageRecord]:
        was_training = model.training
        model.eval()
        records = []
        try:
            if shard is not None:
                return validate_agreeing(shard, one_image, count, should_stop, progress)
            for done, i in enumerate(indices):
                if should_stop():
                    raise ValidationInterrupted(i, count)
                records.append(one_image(i))
                progress((done + 1) / len(indices))
        finally:
            model.train(was_training)
        return records

    records = validate_share() if shard is None else gather_records(shard, validate_share, count)
    return assemble(records, started=started, used_ema=used_ema)
