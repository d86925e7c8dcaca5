"""Scoring one window the way papers do: the model's output and the bicubic baseline, each
rounded to 8 bits (what a saved frame holds), against the GT with a border cropped, in RGB and
on the BT.601 Y channel. Also the checkpoint → model loading `evaluate` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vsr_async.data.images import to_tensor
from vsr_async.errors import CheckpointError, OptionError
from vsr_async.files.checkpoints import (
    SHAPE_KEYS,
    check_archive,
    load_checkpoint,
    saved_model_name,
)
from vsr_async.metrics import SSIM_WINDOW, crop_border, psnr, psnr_y, ssim, ssim_y
from vsr_async.nn.models import Model, build_model
from vsr_async.nn.tiling import TiledInference
from vsr_async.training.validation import bicubic_upscale

SCORE_KEYS = ("psnr_rgb_db", "ssim_rgb", "psnr_y_db", "ssim_y")
Scores = dict[str, float | None]
"""SCORE_KEYS → value (None where PSNR is infinite: identical images)."""


@dataclass(frozen=True)
class LoadedModel:
    model: Model
    path: Path
    step: int
    weights: str  # "ema" or "live"
    shape: dict[str, int]  # N_FEATS, N_BLOCKS, NUM_FRAMES, SCALE

    @property
    def num_frames(self) -> int:
        return self.shape["NUM_FRAMES"]

    @property
    def scale(self) -> int:
        return self.shape["SCALE"]


def model_from_checkpoint(path: Path, device: torch.device, weights: str = "auto") -> LoadedModel:
    """The model of a training checkpoint (`.pt`), on `device`, in eval mode. `weights`: "ema"
    (an error if the checkpoint has none), "live", or "auto" (EMA when the checkpoint has it,
    as validation scores it)."""
    if path.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(path, "no such file")
    check_archive(path)
    state = load_checkpoint(path)
    saved = state["config"] if isinstance(state["config"], dict) else {}
    size_keys = [k for k in SHAPE_KEYS if k != "MODEL"]
    missing = [k for k in size_keys if not isinstance(saved.get(k), int)]
    if missing:
        raise CheckpointError(path, f"does not say its model shape (no {', '.join(missing)})")
    shape = {k: int(saved[k]) for k in size_keys}
    has_ema = state.get("ema") is not None
    if weights == "ema" and not has_ema:
        raise CheckpointError(path, "holds no EMA weights (trained with EMA_DECAY=0)")
    use = "ema" if weights == "ema" or (weights == "auto" and has_ema) else "live"
    try:
        model = build_model(
            saved_model_name(state),
            n_feats=shape["N_FEATS"],
            n_blocks=shape["N_BLOCKS"],
            num_frames=shape["NUM_FRAMES"],
            scale=shape["SCALE"],
        )
        model.load_state_dict(state["ema"] if use == "ema" else state["model"])
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(
            path, f"weights do not fit the model shape it names: {detail}"
        ) from None
    model.to(device).eval()
    return LoadedModel(model, path, int(state["step"]), use, shape)


def check_crop(border: int, name: str, height: int, width: int) -> None:
    """SSIM needs an 11x11 window inside the cropped image; say so before any work is lost."""
    if min(height, width) - 2 * border < SSIM_WINDOW:
        raise OptionError(
            "--crop-border",
            f"{border} px at every border leaves {name} ({width}x{height}) smaller than SSIM's "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} window; use a smaller --crop-border",
        )


def to_8_bits(image: Tensor) -> Tensor:
    """[0, 1] → the nearest of the 256 levels a saved 8-bit frame holds."""
    return image.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


@torch.inference_mode()
def score_window(
    model: nn.Module,
    lr: np.ndarray,
    gt: np.ndarray,
    *,
    scale: int,
    border: int,
    device: torch.device,
    tiling: TiledInference,
    name: str = "",
) -> tuple[Scores, Scores]:
    """(model scores, bicubic scores) of one LR window uint8 [T, h, w, 3] against its GT uint8
    [H, W, 3] (the centre frame's). One device→host transfer."""
    frames = to_tensor(lr).unsqueeze(0).to(device)  # [1, T, 3, h, w]
    target = to_tensor(gt).unsqueeze(0).to(device)  # [1, 3, H, W]
    sr = to_8_bits(tiling(model, frames, scale=scale, name=name).float())
    bicubic = to_8_bits(bicubic_upscale(frames[:, frames.shape[1] // 2], scale))
    values = []
    for image in (sr, bicubic):
        cropped, cropped_gt = crop_border(image, border), crop_border(target, border)
        values += [
            psnr(cropped, cropped_gt)[0],
            ssim(cropped, cropped_gt)[0],
            psnr_y(image, target, border)[0],
            ssim_y(image, target, border)[0],
        ]
    numbers = torch.stack(values).tolist()
    return _scores(numbers[:4]), _scores(numbers[4:])


def _scores(values: list[float]) -> Scores:
    return {k: (v if math.isfinite(v) else None) for k, v in zip(SCORE_KEYS, values, strict=True)}


def mean_scores(scores: list[Scores]) -> Scores:
    """Mean of each score (None if any is None: an infinite PSNR makes the mean infinite)."""
    out: Scores = {}
    for key in SCORE_KEYS:
        values = [s[key] for s in scores]
        known = [v for v in values if v is not None]
        out[key] = sum(known) / len(known) if known and len(known) == len(values) else None
    return out


def gain(model: Scores, bicubic: Scores) -> dict[str, Any]:
    """How much the model beats bicubic (PSNR in dB, SSIM as a difference)."""
    out: dict[str, Any] = {}
    for key in SCORE_KEYS:
        a, b = model[key], bicubic[key]
        out[key] = a - b if a is not None and b is not None else None
    return out
