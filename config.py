"""vsr_async run configuration: every key, at its default.

Edit what you need, then run `python -m vsr_async train` in this folder (it reads ./config.py)
or `python -m vsr_async train --config PATH`; `--set KEY=VALUE` overrides a key for one run.
Keys marked "live" can also be changed during a run, in the web panel. This file is Python and
is executed when loaded: load only files you trust (TOML files hold the same keys as plain data).
Written by `python -m vsr_async config --write FILE`; `python -m vsr_async config` lists the keys.
"""

# MODEL (start-only: a checkpoint only fits the shape it was trained with)
# "vsrnet" (this project's model) or "vsrpp" (the predecessor's VSRBidirectional_3x, x3 only:
# continues its checkpoint_step_*.pth files).
MODEL = "vsrnet"  # one of 'vsrnet', 'vsrpp'
# Feature channels (F) in every propagation block.
N_FEATS = 64  # in [4, 1024]
# Residual blocks in total, split evenly between the backward and forward trunk (even for vsrnet;
# vsrpp rounds an odd count down, as the predecessor did).
N_BLOCKS = 24  # in [2, 512]
# LR frames (T) per sample; odd, the output is the centre frame.
NUM_FRAMES = 5  # in [1, 31]
# Upscaling factor: 2, 3 or 4.
SCALE = 3  # in [2, 4]

# BATCH
# Samples per micro-batch, or "auto": the largest that fits the GPU (see EFFECTIVE_BATCH).
BATCH_SIZE = 4  # an integer or one of 'auto'; in [1, 4096]
# Micro-batches per optimizer step (gradient accumulation).
ACCUMULATION_STEPS = 1  # in [1, 1024]
# Samples per optimizer step when BATCH_SIZE is "auto"; 0 = BATCH_SIZE x ACCUMULATION_STEPS.
EFFECTIVE_BATCH = 0  # in [0, 65536]
# GT crop size for the frame-folder layout (the patch layout reads sizes from its files).
GT_PATCH_SIZE = 192  # in [12, 4096]

# LEARNING RATE
# Warmup starts at 10**LR_EXPONENT and rises linearly to MAX_LR (predecessor's meaning).
LR_EXPONENT = -5.0  # in [-12, 0]
# AdamW weight decay.
WEIGHT_DECAY = 0.001  # in [0, 1]; live
# Optimizer steps of linear warmup.
WARMUP_STEPS = 1000  # in [0, 1e+09]
# Peak learning rate, reached at the end of warmup; cosine decay follows.
MAX_LR = 0.0001  # in [1e-12, 1]; live
# Learning rate at MAX_STEPS (end of the cosine).
MIN_LR = 1e-6  # in [0, 1]; live

# LOSS WEIGHTS (targets: the adaptive system moves the weights around them)
# Weight of the L1 pixel loss.
L1_WEIGHT = 1.0  # in [0, 100]; live
# Weight of the multi-scale L1 loss (1/2 and 1/4 resolution).
MS_WEIGHT = 0.1  # in [0, 100]; live
# Weight of the image-gradient (edge) L1 loss.
GRAD_WEIGHT = 0.1  # in [0, 100]; live
# Weight of the VGG16 perceptual loss (0 = off; the VGG is built only when > 0).
PERCEPTUAL_WEIGHT = 0.0  # in [0, 100]
# VGG16 weights file (torchvision state_dict layout); empty = torchvision's ImageNet weights
# vgg16-397923af.pth from torch.hub's cache, downloaded there once if missing.
PERCEPTUAL_WEIGHTS_PATH = ""

# CADENCE
# Optimizer steps of the whole run.
MAX_STEPS = 100000  # in [1, 1e+10]
# Validate, then write Statistik_<step>.json, every this many optimizer steps.
VAL_STEP_EVERY = 500  # in [1, 1e+10]; live
# Save a checkpoint every this many optimizer steps.
SAVE_STEP_EVERY = 10000  # in [1, 1e+10]; live
# Read losses off the device and log them every this many steps (the only sync cadence).
LOG_TBOARD_EVERY = 100  # in [1, 1e+10]; live
# Write weight histograms to TensorBoard every this many steps.
HIST_STEP_EVERY = 500  # in [1, 1e+10]; live
# Newest periodic checkpoints kept, besides the best one (0 = keep every one, as the predecessor
# did).
KEEP_CHECKPOINTS = 3  # in [0, 1000]; live

# DATA
# Run ("Learn") directory: Statistik files, checkpoints, TensorBoard, training.log.
DATA_ROOT = "Learn"
# Dataset directory (patch or frame-folder layout); never written to.
DATASET_ROOT = ""
# "patches" (Patches/GT, Patches/LR, Val/...), "frames" (GT/<clip>/...) or "auto".
DATASET_LAYOUT = "auto"  # one of 'auto', 'patches', 'frames'
# Validate on at most this many images (0 = all).
VAL_MAX_IMAGES = 0  # in [0, 1e+06]
# Patch layout: the training folder (GT/ and LR/ inside); the predecessor's generator also writes
# Patches_Medium169, Patches_Large, Patches_XLarge169, Patches_FullHD.
PATCH_FOLDER = "Patches"
# Patch layout: the LR folder in PATCH_FOLDER and Val/ ("LR", "LR_7frames", ...); "auto":
# LR_<NUM_FRAMES>frames if there, else LR.
LR_FOLDER = "auto"
# A Val/GT image without a Val/LR file: "patches" takes the same name from the training LR folder
# (the predecessor's way), "bicubic" makes LR from the GT, "skip" leaves it out.
VAL_LR_MISSING = "patches"  # one of 'patches', 'bicubic', 'skip'
# Patch layout without Val/ images: training samples held out (fixed by name) to validate on; at
# most a tenth of them.
VAL_HOLDOUT_IMAGES = 100  # in [1, 1e+06]
# Data-loader worker processes (0 = load on the GPU thread).
NUM_WORKERS = 2  # in [0, 256]
# Pin host batches for non-blocking copies to the GPU (ignored on the CPU).
PIN_MEMORY = True

# ADAPTIVE SYSTEM
# Let the adaptive system move loss weights around their targets.
ADAPTIVE_LOSS_WEIGHTS = True
# Derive the gradient clip from recent gradient norms.
ADAPTIVE_GRAD_CLIP = True
# Gradient-norm clip (the starting value when ADAPTIVE_GRAD_CLIP is on).
INITIAL_GRAD_CLIP = 1.5  # in [1e-06, 1e+06]; live
# Steps after warmup in mode Settling: no weight moves, no plateau decisions yet.
ADAPTIVE_SETTLING_STEPS = 500  # in [0, 1e+09]; live
# Settling steps after a resume or a safety reset (0: a resume continues undisturbed).
ADAPTIVE_RESUME_SETTLING_STEPS = 200  # in [0, 1e+09]; live
# Steps over which sharpness is averaged and the perceptual-loss trend is fitted.
ADAPTIVE_WINDOW_STEPS = 500  # in [1, 1e+09]; live
# Sharpness ratio (output/GT edges) within 1 ± this leaves the weights alone.
ADAPTIVE_SHARPNESS_TOLERANCE = 0.05  # in [0, 1]; live
# Largest change of a weight per decision, as a fraction of its target.
ADAPTIVE_WEIGHT_MAX_STEP = 0.1  # in [0, 1]; live
# Steps after a weight move before the next one (halved in mode Aggressive).
ADAPTIVE_WEIGHT_COOLDOWN_STEPS = 1000  # in [0, 1e+09]; live
# MS, gradient and perceptual weights never go below this fraction of their target.
ADAPTIVE_WEIGHT_FLOOR = 0.25  # in [0, 1]; live
# MS, gradient and perceptual weights never go above this multiple of their target.
ADAPTIVE_WEIGHT_CEILING = 4.0  # in [1, 100]; live
# The L1 weight stays between this fraction of L1_WEIGHT and L1_WEIGHT.
ADAPTIVE_L1_FLOOR = 0.5  # in [0, 1]; live
# Relative drop of the smoothed training loss below its best that counts as progress.
ADAPTIVE_PLATEAU_THRESHOLD = 0.002  # in [0, 1]; live
# Steps without progress on the smoothed loss before a plateau is declared.
ADAPTIVE_PLATEAU_PATIENCE_STEPS = 3000  # in [1, 1e+09]; live
# Gain over the best validation quality (fraction 0–1) that counts as a new best.
ADAPTIVE_QUALITY_MIN_GAIN = 0.0001  # in [0, 1]; live
# Validations in a row without a new best quality before a plateau is declared.
ADAPTIVE_QUALITY_PATIENCE = 3  # in [1, 1e+06]; live
# Learning-rate multiplier on a plateau (capped at MAX_LR); 1 turns boosts off.
ADAPTIVE_LR_BOOST_FACTOR = 3.0  # in [1, 100]; live
# Steps an LR boost lasts.
ADAPTIVE_LR_BOOST_STEPS = 500  # in [1, 1e+09]; live
# Steps after a boost ends before another boost is available.
ADAPTIVE_LR_BOOST_COOLDOWN_STEPS = 5000  # in [0, 1e+09]; live
# A plateau that lasts this many steps after an LR boost resets weights and clip.
ADAPTIVE_RESET_STEPS = 20000  # in [1, 1e+10]; live
# Percentile of recent gradient norms that the adaptive clip follows.
ADAPTIVE_CLIP_PERCENTILE = 95.0  # in [50, 100]; live
# Adaptive clip = percentile x this margin.
ADAPTIVE_CLIP_MARGIN = 1.5  # in [1, 100]; live
# Lower bound of the adaptive clip.
ADAPTIVE_CLIP_MIN = 0.001  # in [1e-06, 1]; live
# Upper bound of the adaptive clip.
ADAPTIVE_CLIP_MAX = 100.0  # in [1, 1e+06]; live
# Recent steps whose gradient norms the adaptive clip is computed from.
ADAPTIVE_CLIP_HISTORY = 1000  # in [32, 1e+06]; live

# PRECISION AND SPEED
# Autocast: "auto" picks by device capability; "bf16", "fp16" (with grad scaler) or "off".
AMP = "auto"  # one of 'auto', 'bf16', 'fp16', 'off'
# Use channels_last memory format on CUDA (faster convolutions on tensor cores).
CHANNELS_LAST = True
# Recompute the propagation trunks in backward to save memory.
GRADIENT_CHECKPOINTING = False
# torch.compile the model (slow first steps, faster later).
COMPILE = False
# Decay of the EMA weights used for validation; 0 = off.
EMA_DECAY = 0.0  # in [0, 0.999999]
# Stop (with a checkpoint) after this many consecutive non-finite losses.
NAN_LIMIT = 10  # in [1, 1e+06]
# Seed for model init, sampling and augmentation.
SEED = 0  # in [0, 9.22337e+18]
# "auto" (CUDA if present), "cpu", "cuda" or "cuda:N".
DEVICE = "auto"
# Under torchrun: seconds a rank waits for the others in one exchange (start, a step, a
# validation) before the job fails instead of hanging.
DIST_TIMEOUT_S = 300.0  # in [5, 86400]

# WEB PANEL AND KEYBOARD
# Serve the web panel and REST API (--no-web turns it off).
WEB_ENABLED = True
# Bind address; anything but loopback requires a bearer token on every request.
WEB_HOST = "127.0.0.1"
# Panel port (0 = any free port, printed at start).
WEB_PORT = 5050  # in [0, 65535]
# Bearer token; empty = generated and printed once when the host is not loopback. Secret: never
# stored in checkpoints, Statistik files, logs or TensorBoard.
WEB_TOKEN = ""
# Connections the panel keeps open at once (event streams included); one more gets a 503 and is
# closed. 0 = a quarter of the process's file-descriptor limit, at most 256.
WEB_MAX_CONNECTIONS = 0  # in [0, 65536]
# Seconds a connection may go without sending a complete request head, after connecting and
# between requests; then it is closed. Requests being answered (event streams) are not.
WEB_IDLE_TIMEOUT_S = 10.0  # in [0.1, 3600]
# Serve TensorBoard (of this run's tensorboard/ folder) from the training process, on WEB_HOST;
# the panel links to it (--tensorboard [PORT] turns it on). No token: on a non-loopback WEB_HOST
# anyone who reaches the port can read it.
TENSORBOARD_ENABLED = False
# TensorBoard's port (0 = any free port, printed at start).
TENSORBOARD_PORT = 6006  # in [0, 65535]
# Read keys from stdin when it is a terminal (--no-keyboard turns it off).
KEYBOARD_ENABLED = True
