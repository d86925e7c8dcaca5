"""The keys of what is trained and how: model shape, batch, learning rate, loss weights, cadence
and data. `Config` (schema.py) extends them with the adaptive system, precision and the web panel;
the split only keeps each module short — users see one flat set of keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vsr_async.settings.values import key

Layout = Literal["auto", "patches", "frames"]
ValLrMissing = Literal["patches", "bicubic", "skip"]
ModelName = Literal["vsrnet", "vsrpp"]  # nn.models.MODELS builds them (a test keeps both equal)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunKeys:
    """Model, batch, learning rate, loss weights, cadence and data (validated by `Config`)."""

    # --- model (start-only: a checkpoint only fits the shape it was trained with) -----------
    MODEL: ModelName = key(
        "vsrnet",
        '"vsrnet" (this project\'s model) or "vsrpp" (the predecessor\'s VSRBidirectional_3x, '
        "x3 only: continues its checkpoint_step_*.pth files).",
    )
    N_FEATS: int = key(64, "Feature channels (F) in every propagation block.", lo=4, hi=1024)
    N_BLOCKS: int = key(
        24,
        "Residual blocks in total, split evenly between the backward and forward trunk "
        "(even for vsrnet; vsrpp rounds an odd count down, as the predecessor did).",
        lo=2,
        hi=512,
    )
    NUM_FRAMES: int = key(
        5, "LR frames (T) per sample; odd, the output is the centre frame.", lo=1, hi=31
    )
    SCALE: int = key(3, "Upscaling factor: 2, 3 or 4.", lo=2, hi=4)

    # --- batch ---------------------------------------------------------------------------------
    BATCH_SIZE: int | Literal["auto"] = key(
        4,
        'Samples per micro-batch, or "auto": the largest that fits the GPU (see EFFECTIVE_BATCH).',
        lo=1,
        hi=4096,
    )
    ACCUMULATION_STEPS: int = key(
        1, "Micro-batches per optimizer step (gradient accumulation).", lo=1, hi=1024
    )
    EFFECTIVE_BATCH: int = key(
        0,
        'Samples per optimizer step when BATCH_SIZE is "auto"; '
        "0 = BATCH_SIZE x ACCUMULATION_STEPS.",
        lo=0,
        hi=65536,
    )
    GT_PATCH_SIZE: int = key(
        192,
        "GT crop size for the frame-folder layout (the patch layout reads sizes from its files).",
        lo=12,
        hi=4096,
    )

    # --- learning rate -------------------------------------------------------------------------
    LR_EXPONENT: float = key(
        -5.0,
        "Warmup starts at 10**LR_EXPONENT and rises linearly to MAX_LR (predecessor's meaning).",
        lo=-12.0,
        hi=0.0,
    )
    WEIGHT_DECAY: float = key(1e-3, "AdamW weight decay.", lo=0.0, hi=1.0, live=True)
    WARMUP_STEPS: int = key(1000, "Optimizer steps of linear warmup.", lo=0, hi=10**9)
    MAX_LR: float = key(
        1e-4,
        "Peak learning rate, reached at the end of warmup; cosine decay follows.",
        lo=1e-12,
        hi=1.0,
        live=True,
    )
    MIN_LR: float = key(
        1e-6, "Learning rate at MAX_STEPS (end of the cosine).", lo=0.0, hi=1.0, live=True
    )

    # --- loss weights (targets; the adaptive system moves the current weights around them) -----
    L1_WEIGHT: float = key(1.0, "Weight of the L1 pixel loss.", lo=0.0, hi=100.0, live=True)
    MS_WEIGHT: float = key(
        0.1,
        "Weight of the multi-scale L1 loss (1/2 and 1/4 resolution).",
        lo=0.0,
        hi=100.0,
        live=True,
    )
    GRAD_WEIGHT: float = key(
        0.1, "Weight of the image-gradient (edge) L1 loss.", lo=0.0, hi=100.0, live=True
    )
    PERCEPTUAL_WEIGHT: float = key(
        0.0,
        "Weight of the VGG16 perceptual loss (0 = off; the VGG is built only when > 0).",
        lo=0.0,
        hi=100.0,
    )
    PERCEPTUAL_WEIGHTS_PATH: str = key(
        "",
        "VGG16 weights file (torchvision state_dict layout); empty = torchvision's ImageNet "
        "weights vgg16-397923af.pth from torch.hub's cache, downloaded there once if missing.",
    )

    # --- cadence -------------------------------------------------------------------------------
    MAX_STEPS: int = key(100_000, "Optimizer steps of the whole run.", lo=1, hi=10**10)
    VAL_STEP_EVERY: int = key(
        500,
        "Validate, then write Statistik_<step>.json, every this many optimizer steps.",
        lo=1,
        hi=10**10,
        live=True,
    )
    SAVE_STEP_EVERY: int = key(
        10_000, "Save a checkpoint every this many optimizer steps.", lo=1, hi=10**10, live=True
    )
    LOG_TBOARD_EVERY: int = key(
        100,
        "Read losses off the device and log them every this many steps (the only sync cadence).",
        lo=1,
        hi=10**10,
        live=True,
    )
    HIST_STEP_EVERY: int = key(
        500,
        "Write weight histograms to TensorBoard every this many steps.",
        lo=1,
        hi=10**10,
        live=True,
    )
    KEEP_CHECKPOINTS: int = key(
        3,
        "Newest periodic checkpoints kept, besides the best one (0 = keep every one, as the "
        "predecessor did).",
        lo=0,
        hi=1000,
        live=True,
    )

    # --- data ----------------------------------------------------------------------------------
    DATA_ROOT: str = key(
        "Learn", 'Run ("Learn") directory: Statistik files, checkpoints, TensorBoard, training.log.'
    )
    DATASET_ROOT: str = key(
        "", "Dataset directory (patch or frame-folder layout); never written to."
    )
    DATASET_LAYOUT: Layout = key(
        "auto", '"patches" (Patches/GT, Patches/LR, Val/...), "frames" (GT/<clip>/...) or "auto".'
    )
    VAL_MAX_IMAGES: int = key(0, "Validate on at most this many images (0 = all).", lo=0, hi=10**6)
    PATCH_FOLDER: str = key(
        "Patches",
        "Patch layout: the training folder (GT/ and LR/ inside); the predecessor's generator "
        "also writes Patches_Medium169, Patches_Large, Patches_XLarge169, Patches_FullHD.",
    )
    LR_FOLDER: str = key(
        "auto",
        'Patch layout: the LR folder in PATCH_FOLDER and Val/ ("LR", "LR_7frames", ...); '
        '"auto": LR_<NUM_FRAMES>frames if there, else LR.',
    )
    VAL_LR_MISSING: ValLrMissing = key(
        "patches",
        'A Val/GT image without a Val/LR file: "patches" takes the same name from the training '
        'LR folder (the predecessor\'s way), "bicubic" makes LR from the GT, "skip" leaves it out.',
    )
    VAL_HOLDOUT_IMAGES: int = key(
        100,
        "Patch layout without Val/ images: training samples held out (fixed by name) to "
        "validate on; at most a tenth of them.",
        lo=1,
        hi=10**6,
    )
    NUM_WORKERS: int = key(
        2, "Data-loader worker processes (0 = load on the GPU thread).", lo=0, hi=256
    )
    PIN_MEMORY: bool = key(
        True, "Pin host batches for non-blocking copies to the GPU (ignored on the CPU)."
    )
