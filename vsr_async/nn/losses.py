"""Training losses: L1, multi-scale L1, image-gradient L1, VGG perceptual; a sharpness probe.

Pure compute on the device: every result is a tensor, nothing is read back to the host. Weights
arrive with each call (the adaptive system changes them between steps), never stored here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsr_async.records import LossTerm, LossWeights

__all__ = ["LossComputer", "LossTerm", "LossWeights", "sharpness_ratio"]


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences along W and H: [B, C, H, W] → [B, C, H, W−1], [B, C, H−1, W]."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _multiscale_l1(sr: Tensor, gt: Tensor) -> Tensor:
    """Mean of the L1 at 1/2 and 1/4 resolution: penalises colour and low-frequency drift."""
    half = F.l1_loss(F.avg_pool2d(sr, 2), F.avg_pool2d(gt, 2))  # at [B, 3, H/2, W/2]
    quarter = F.l1_loss(F.avg_pool2d(sr, 4), F.avg_pool2d(gt, 4))  # at [B, 3, H/4, W/4]
    return 0.5 * (half + quarter)


def _gradient_l1(sr: Tensor, gt: Tensor) -> Tensor:
    """L1 between the finite-difference gradients of sr and gt: rewards sharp, aligned edges."""
    sr_dx, sr_dy = _gradients(sr)
    gt_dx, gt_dy = _gradients(gt)
    return 0.5 * (F.l1_loss(sr_dx, gt_dx) + F.l1_loss(sr_dy, gt_dy))


class LossComputer(nn.Module):
    """Weighted training loss and its unweighted terms (in `LossTerm` order).

    Computed in float32 even under autocast: sr and gt are cast first, so small differences do
    not vanish in bf16. The perceptual network itself still runs under the caller's autocast (it
    is the expensive part); its features are compared in float32.
    """

    def __init__(self, perceptual: nn.Module | None = None) -> None:
        super().__init__()
        self.perceptual = perceptual

    def forward(self, sr: Tensor, gt: Tensor, weights: LossWeights) -> tuple[Tensor, Tensor]:
        """sr, gt: [B, 3, H, W] → (total: 0-dim, terms: [4] unweighted), float32 on the device."""
        if sr.shape != gt.shape:
            raise ValueError(f"sr and gt shapes differ: {tuple(sr.shape)} vs {tuple(gt.shape)}")
        sr, gt = sr.float(), gt.float()
        l1 = F.l1_loss(sr, gt)
        ms = _multiscale_l1(sr, gt)
        grad = _gradient_l1(sr, gt)
        if weights.perceptual > 0 and self.perceptual is not None:
            perceptual = _feature_l1(self.perceptual, sr, gt)
        else:
            perceptual = torch.zeros((), device=sr.device)  # off: no VGG pass at all
        terms = torch.stack([l1, ms, grad, perceptual])  # [4], in LossTerm order
        # Python floats multiply eagerly, so a new weight needs no rebuild and no recompile.
        total = (
            weights.l1 * l1
            + weights.ms * ms
            + weights.gradient * grad
            + weights.perceptual * perceptual
        )
        return total, terms.detach()


def _feature_l1(network: nn.Module, sr: Tensor, gt: Tensor) -> Tensor:
    """L1 between a feature network's outputs for sr and gt (the perceptual term)."""
    with torch.no_grad():  # gt needs no graph: saves the activations of a second pass
        gt_feats = network(gt).float()
    return F.l1_loss(network(sr).float(), gt_feats)


def sharpness_ratio(sr: Tensor, gt: Tensor) -> Tensor:
    """Mean gradient magnitude of sr over that of gt, a 0-dim float32 tensor on the device.

    < 1: the output is blurrier than the ground truth; > 1: oversharpened (ringing, noise). The
    adaptive system reads it to move the gradient-loss weight. No graph is kept.
    """
    with torch.no_grad():
        return _gradient_magnitude(sr.float()) / _gradient_magnitude(gt.float()).clamp_min(1e-12)


def _gradient_magnitude(x: Tensor) -> Tensor:
    """Mean √(dx² + dy²) over the pixels where both differences exist: 0-dim."""
    dx, dy = _gradients(x)
    return torch.sqrt(dx[..., :-1, :].square() + dy[..., :, :-1].square()).mean()
