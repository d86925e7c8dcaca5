"""Plain data that the GPU worker hands to the event loop: Python numbers, never tensors.

Kept free of torch so the store, the web layer and the dashboard import it cheaply.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any, NamedTuple, Protocol

import numpy as np


class LossTargets(Protocol):
    """The config's loss-weight targets, as `LossWeights.from_config` reads them (a `Config`;
    this module imports no layer, so it names only what it reads)."""

    @property
    def L1_WEIGHT(self) -> float: ...
    @property
    def MS_WEIGHT(self) -> float: ...
    @property
    def GRAD_WEIGHT(self) -> float: ...
    @property
    def PERCEPTUAL_WEIGHT(self) -> float: ...


class LossTerm(enum.StrEnum):
    """The training loss's terms, named as every outside name spells them (`gradient_loss_value`,
    the history's `gradient`, `Loss/Gradient`). Their order is the order of every tensor, tuple
    and list of per-term values (the loss's terms, the adaptive state's multipliers)."""

    L1 = "l1"
    MS = "ms"
    GRADIENT = "gradient"
    PERCEPTUAL = "perceptual"


@dataclass(frozen=True, slots=True)
class LossWeights:
    """Current weight of each loss term (fields named as `LossTerm`); a new object per change
    (the adaptive system moves them around the config's targets)."""

    l1: float = 1.0
    ms: float = 0.0
    gradient: float = 0.0
    perceptual: float = 0.0

    @classmethod
    def from_config(cls, config: LossTargets) -> LossWeights:
        """The configured targets (where the adaptive system starts)."""
        return cls(
            l1=config.L1_WEIGHT,
            ms=config.MS_WEIGHT,
            gradient=config.GRAD_WEIGHT,
            perceptual=config.PERCEPTUAL_WEIGHT,
        )

    def of(self, term: LossTerm) -> float:
        return float(getattr(self, term.value))


class LossMeans(NamedTuple):
    """A logging window's means: the weighted total, then each term unweighted (`LossTerm`
    order, so `LossMeans(*tensor.tolist())` reads a [5] tensor laid out the same way)."""

    total: float
    l1: float
    ms: float
    gradient: float
    perceptual: float


class AdaptiveMode(enum.StrEnum):
    """The adaptive system's mode (`adaptive_mode`); the order is TensorBoard's `Adaptive/Mode`
    index."""

    OFF = "Off"  # ADAPTIVE_LOSS_WEIGHTS and ADAPTIVE_GRAD_CLIP both false: nothing moves
    WARMUP = "Warmup"  # step < WARMUP_STEPS
    SETTLING = "Settling"  # after warmup, a resume or a safety reset: no weight or plateau moves
    STABLE = "Stable"
    AGGRESSIVE = "Aggressive"  # a plateau is detected; left when progress resumes


@dataclass(frozen=True)
class AdaptiveReport:
    """The adaptive system's state as the panel shows it (all computed, none constant)."""

    mode: AdaptiveMode
    is_cooldown: bool
    cooldown_remaining: int
    plateau_counter: int
    lr_boost_available: bool
    perceptual_trend: float


@dataclass(frozen=True)
class StepStats:
    """Numbers read off the device at the logging cadence (the only per-step sync point)."""

    losses: LossMeans  # window means of the weighted total and the unweighted terms
    grad_norm: float
    weights: LossWeights
    grad_clip: float
    adaptive: AdaptiveReport
    activity: dict[str, float]
    adam_momentum_avg: float
    vram_peak_gb: float | None  # None on the CPU
    vram_reserved_gb: float | None
    host_memory_gb: float
    nonfinite_steps: int  # total non-finite steps skipped so far
    nonfinite_streak: int  # consecutive non-finite steps up to this one


@dataclass(frozen=True)
class StepResult:
    """One optimizer step done; `stats` only on logging steps."""

    step: int  # optimizer steps completed
    epoch: int
    epoch_step: int
    epoch_steps_total: int
    learning_rate: float
    lr_phase: str
    skipped_files: tuple[str, ...] = ()
    stats: StepStats | None = None
    histograms: dict[str, Any] | None = field(default=None, repr=False)  # HIST_STEP_EVERY


@dataclass(frozen=True)
class ImageMetrics:
    """One validation image: bicubic ("LR") and model output ("KI") against the GT.

    The `_y_` numbers are on the BT.601 Y channel with SCALE pixels cropped at every border
    (how papers report), NaN where the image is too small for that crop (null in the snapshot).
    """

    name: str
    psnr_lr_db: float
    psnr_ki_db: float
    ssim_lr: float
    ssim_ki: float
    quality_lr: float
    quality_ki: float
    psnr_y_lr_db: float = math.nan
    psnr_y_ki_db: float = math.nan
    ssim_y_lr: float = math.nan
    ssim_y_ki: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ValidationResult:
    """A finished validation; the means are derived so they can never disagree with the images."""

    images: tuple[ImageMetrics, ...]
    loss: float  # mean L1 of the output against the GT
    duration_s: float
    used_ema: bool
    strips: tuple[np.ndarray, ...] = field(default=(), repr=False)  # uint8 HxWx3: LR|out|GT

    @property
    def quality_lr(self) -> float:
        return fmean(m.quality_lr for m in self.images)

    @property
    def quality_ki(self) -> float:
        return fmean(m.quality_ki for m in self.images)

    @property
    def quality_improvement(self) -> float:
        return fmean(m.quality_ki - m.quality_lr for m in self.images)

    @property
    def quality_ki_to_gt(self) -> float:
        return fmean(m.quality_ki - 1.0 for m in self.images)

    @property
    def quality_lr_to_gt(self) -> float:
        return fmean(m.quality_lr - 1.0 for m in self.images)

    @property
    def psnr_lr_db(self) -> float:
        return fmean(m.psnr_lr_db for m in self.images)

    @property
    def psnr_ki_db(self) -> float:
        return fmean(m.psnr_ki_db for m in self.images)

    @property
    def psnr_gain_db(self) -> float:
        return self.psnr_ki_db - self.psnr_lr_db

    @property
    def ssim_lr(self) -> float:
        return fmean(m.ssim_lr for m in self.images)

    @property
    def ssim_ki(self) -> float:
        return fmean(m.ssim_ki for m in self.images)

    @property
    def psnr_y_lr_db(self) -> float:
        return fmean(m.psnr_y_lr_db for m in self.images)

    @property
    def psnr_y_ki_db(self) -> float:
        return fmean(m.psnr_y_ki_db for m in self.images)

    @property
    def psnr_y_gain_db(self) -> float:
        return self.psnr_y_ki_db - self.psnr_y_lr_db

    @property
    def ssim_y_lr(self) -> float:
        return fmean(m.ssim_y_lr for m in self.images)

    @property
    def ssim_y_ki(self) -> float:
        return fmean(m.ssim_y_ki for m in self.images)
