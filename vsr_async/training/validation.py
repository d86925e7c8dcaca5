"""Validation: PSNR, SSIM and quality of the bicubic upscale ("LR") and of the model output
("KI") against the GT, per image, plus the LR | output | GT strips for the panel. PSNR and SSIM
also on the Y channel with SCALE pixels cropped at the border, as papers report them.

Plain synchronous code for the GPU thread; one device→host transfer per image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_async.errors import ValidationInterrupted
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
) -> ValidationResult:
    """Metrics of every validation clip; one that runs out of device memory is restored in
    tiles (`tiling` remembers the tiling across calls; a fresh one if None).

    `should_stop` is asked before every image, so a stop never waits for the whole set; it
    raises `ValidationInterrupted`."""
    tiling = tiling if tiling is not None else TiledInference()
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    centre = num_frames // 2
    images, strips, losses = [], [], []
    count = len(val_set)
    try:
        for i in range(count):
            if should_stop():
                raise ValidationInterrupted(i, count)
            name, lr_frames, gt = val_set[i]
            lr_frames = lr_frames.unsqueeze(0).to(device)  # [1, T, 3, h, w]
            gt = gt.unsqueeze(0).to(device)  # [1, 3, H, W]
            with autocast():
                sr = tiling(model, lr_frames, scale=scale, name=name)  # [1, 3, H, W]
            sr = sr.float().clamp(0, 1)  # metrics on the clamped output (DESIGN §3)
            lr_up = bicubic_upscale(lr_frames[:, centre].float(), scale).clamp(0, 1)
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
            images.append(
                ImageMetrics(
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
            )
            losses.append(l1)
            if i < STRIP_IMAGES:
                strips.append(to_strip(lr_up, sr, gt))
            progress((i + 1) / count)
    finally:
        model.train(was_training)
    return ValidationResult(
        images=tuple(images),
        loss=sum(losses) / len(losses),
        duration_s=time.perf_counter() - started,
        used_ema=used_ema,
        strips=tuple(strips),
    )
