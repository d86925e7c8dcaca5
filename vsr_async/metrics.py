"""Image quality metrics (PSNR, SSIM, the panel's quality score) as device tensors.

Pure tensor code: it runs on the input's device and never reads a value back to the host, so
validation can batch images and sync once. Definitions match scikit-image's (data range 1).
`psnr_y` / `ssim_y` score the luma channel with a border cropped, as super-resolution papers
report them (ITU-R BT.601 Y as MATLAB's `rgb2ycbcr`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
"""Gaussian window size; with σ 1.5 this is scikit-image's (truncate 3.5 → radius 5)."""
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# ITU-R BT.601 luma for RGB in [0, 1], as MATLAB's rgb2ycbcr (and scikit-image's): Y in
# [16, 235] on the 8-bit scale. Divided by 255 here, so Y is in [16/255, 235/255] and PSNR/SSIM
# take data range 1 (the same numbers as Y in [16, 235] with data range 255).
Y_OFFSET = 16.0
Y_WEIGHTS = (65.481, 128.553, 24.966)


def _as_batch(a: Tensor, b: Tensor, name: str) -> tuple[Tensor, Tensor, bool]:
    """[C,H,W] or [N,C,H,W] pair → [N,C,H,W] pair in the compute dtype, and whether it was 3-D."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise ValueError(f"{name}: expected [C,H,W] or [N,C,H,W], got {tuple(a.shape)}")
    single = a.dim() == 3
    if single:
        a, b = a.unsqueeze(0), b.unsqueeze(0)  # [1, C, H, W]
    # float64 keeps the variance terms (E[x²] − E[x]²) exact enough to match scikit-image to
    # 1e-6; MPS has no float64, float32 there is still within ~1e-5.
    dtype = torch.float32 if a.device.type == "mps" else torch.float64
    return a.to(dtype), b.to(dtype), single


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (data range 1).

    a, b: [C,H,W] → 0-dim tensor, or [N,C,H,W] → [N] (one value per image), float32.
    Identical images give +inf (mse 0); callers that serialise it turn it into null.
    """
    x, y, single = _as_batch(a, b, "psnr")
    mse = (x - y).square().mean(dim=(1, 2, 3))  # [N]
    out = (10.0 * torch.log10(1.0 / mse)).float()
    return out[0] if single else out


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The normalised 1-D Gaussian taps, [SSIM_WINDOW]."""
    radius = SSIM_WINDOW // 2
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity (Wang et al. 2004) for images in [0, 1].

    Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, data range 1, population covariance; the SSIM
    map is taken over the valid region only (no padding) and averaged over pixels and channels:
    scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`.

    a, b: [C,H,W] → 0-dim tensor, or [N,C,H,W] → [N], float32. H and W must be ≥ 11.
    """
    x, y, single = _as_batch(a, b, "ssim")
    _, c, h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {h}×{w}")
    # The five local statistics are filtered in one grouped, separable convolution.
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [N, 5C, H, W]
    g = _gaussian_window(x.device, x.dtype)
    groups = 5 * c
    stats = F.conv2d(stats, g.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    stats = F.conv2d(stats, g.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    # stats: [N, 5C, H-10, W-10], the valid region
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5, dim=1)  # 5 × [N, C, H-10, W-10]
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K·data_range)², data range 1
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    out = (num / den).mean(dim=(1, 2, 3)).float()  # [N]
    return out[0] if single else out


def quality(psnr_db: Tensor | float, ssim_value: Tensor | float) -> Tensor | float:
    """The panel's quality score in [0, 1]: clip(0.7·clip((PSNR−20)/30, 0, 1) + 0.3·SSIM, 0, 1).

    Kept from the predecessor so old Statistik files stay comparable. Tensors in → tensor out
    (element-wise, on their device); two floats in → float out. PSNR +inf counts as 1;
    NaN stays NaN.
    """
    tensor = psnr_db if isinstance(psnr_db, Tensor) else ssim_value
    if isinstance(tensor, Tensor):  # either is a tensor: compute on its device
        p = torch.as_tensor(psnr_db, device=tensor.device)
        s = torch.as_tensor(ssim_value, device=tensor.device)
        return (0.7 * ((p - 20.0) / 30.0).clamp(0.0, 1.0) + 0.3 * s).clamp(0.0, 1.0)
    p_db, s_val = float(psnr_db), float(ssim_value)
    if math.isnan(p_db) or math.isnan(s_val):
        return math.nan  # like the tensor path: NaN in, NaN out, never a silent 0
    p_term = min(max((p_db - 20.0) / 30.0, 0.0), 1.0)
    return min(max(0.7 * p_term + 0.3 * s_val, 0.0), 1.0)


def rgb_to_y(image: Tensor) -> Tensor:
    """BT.601 luma of RGB in [0, 1], as MATLAB's `rgb2ycbcr(...)(:, :, 1) / 255`.

    [..., 3, H, W] → [..., 1, H, W], in the input's dtype (no rounding to 8 bits).
    """
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"rgb_to_y: expected [..., 3, H, W], got {tuple(image.shape)}")
    weights = torch.tensor(Y_WEIGHTS, device=image.device, dtype=image.dtype).view(3, 1, 1)
    y = (image * weights).sum(dim=-3, keepdim=True)  # [..., 1, H, W]
    return (y + Y_OFFSET) / 255.0


def crop_border(image: Tensor, border: int) -> Tensor:
    """`border` pixels cut off every side (papers cut SCALE pixels: the upscaler cannot know
    what lies beyond the frame). [..., H, W] → [..., H − 2·border, W − 2·border]."""
    if border < 0:
        raise ValueError(f"crop_border: border must be >= 0, got {border}")
    if border == 0:
        return image
    h, w = image.shape[-2:]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"crop_border: a {w}×{h} image leaves nothing inside a {border}px border")
    return image[..., border : h - border, border : w - border]


def _y_pair(a: Tensor, b: Tensor, border: int, name: str) -> tuple[Tensor, Tensor]:
    """Luma of both images (converted in float64, like scikit-image), border cropped."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = torch.float32 if a.device.type == "mps" else torch.float64
    return (
        crop_border(rgb_to_y(a.to(dtype)), border),
        crop_border(rgb_to_y(b.to(dtype)), border),
    )


def psnr_y(a: Tensor, b: Tensor, border: int = 0) -> Tensor:
    """PSNR in dB on the BT.601 Y channel with `border` pixels cropped on every side: what
    papers report. RGB in [0, 1]: [3,H,W] → 0-dim tensor, [N,3,H,W] → [N], float32."""
    y_a, y_b = _y_pair(a, b, border, "psnr_y")
    return psnr(y_a, y_b)


def ssim_y(a: Tensor, b: Tensor, border: int = 0) -> Tensor:
    """SSIM (as `ssim`) on the BT.601 Y channel with `border` pixels cropped on every side.
    RGB in [0, 1]: [3,H,W] → 0-dim tensor, [N,3,H,W] → [N], float32."""
    y_a, y_b = _y_pair(a, b, border, "ssim_y")
    return ssim(y_a, y_b)
