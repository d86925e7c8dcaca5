"""VSRNet: a bidirectional recurrent video super-resolution network without optical flow.

Pure compute: no I/O, no asyncio, no host syncs in `forward` (`read_activity` is the one
deliberate sync). Weights are loaded by `checkpoints.py`, never here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vsr_async.nn.activity import read_activity_means


def _init_scaled(conv: nn.Conv2d, scale: float) -> None:
    """Kaiming-normal weights times `scale`, zero bias (BasicSR's `default_init_weights`).

    A small scale makes a residual branch start close to zero, so the untrained net is close to
    identity (ResBlocks) or to bicubic upsampling (the output conv).
    """
    nn.init.kaiming_normal_(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """conv3×3 – ReLU – conv3×3 plus identity; shape-preserving [B, F, h, w]."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        _init_scaled(self.conv1, 0.1)
        _init_scaled(self.conv2, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class Trunk(nn.Module):
    """One recurrent step for one frame: 1×1 fusion of [feature, states…] → F, then ResBlocks.

    Returns the new state [B, F, h, w] and, when tracking, each block's mean |output| as a
    float32 [n_blocks] tensor. Returning the activity (instead of writing a buffer here) keeps the
    step side-effect free, so gradient checkpointing can recompute it without counting twice.
    """

    def __init__(self, n_inputs: int, n_feats: int, n_blocks: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(n_inputs * n_feats, n_feats, 1), nn.LeakyReLU(0.1, inplace=True)
        )
        self.blocks = nn.ModuleList(ResBlock(n_feats) for _ in range(n_blocks))

    def forward(self, x: Tensor, track: bool) -> tuple[Tensor, Tensor | None]:
        h = self.fuse(x)  # [B, n_inputs·F, h, w] → [B, F, h, w]
        activity = []
        for block in self.blocks:
            h = block(h)
            if track:
                activity.append(h.detach().abs().mean(dtype=torch.float32))
        return h, torch.stack(activity) if track else None


class FinalFusion(nn.Module):
    """1×1 conv of the two branch states at the centre frame: [B, 2F, h, w] → [B, F, h, w]."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * n_feats, n_feats, 1)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class VSRNet(nn.Module):
    """Bidirectional recurrent VSR (BasicVSR-style propagation, no flow alignment).

    lr [B, T, 3, h, w] in [0, 1] → the centre frame restored, [B, 3, s·h, s·w]. The network
    learns the residual over bicubic upsampling and starts within ~1e-3 of it.

    `track_activity`: accumulate each block's mean |activation| on the device (for the panel's
    layer activity map); `read_activity()` syncs once and resets. `gradient_checkpointing`:
    recompute each trunk step in backward (same numerics, less memory).
    """

    activity_sum: Tensor
    activity_count: Tensor

    def __init__(self, n_feats: int, n_blocks: int, num_frames: int, scale: int) -> None:
        super().__init__()
        if n_blocks < 2 or n_blocks % 2:
            raise ValueError(f"n_blocks must be even and >= 2 (two trunks), got {n_blocks}")
        if num_frames < 1 or num_frames % 2 == 0:
            raise ValueError(f"num_frames must be odd (centre frame), got {num_frames}")
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        self.n_feats = n_feats
        self.n_blocks = n_blocks
        self.num_frames = num_frames
        self.scale = scale
        half = n_blocks // 2
        self.track_activity = False
        self.gradient_checkpointing = False

        # feature extraction (per frame)
        self.feat_extract = nn.Sequential(
            nn.Conv2d(3, n_feats, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)
        )

        # propagation: backward over all frames, forward up to the centre
        self.backward_trunk = Trunk(2, n_feats, half)  # cat(feat_t, h_b)
        self.forward_trunk = Trunk(3, n_feats, half)  # cat(feat_t, h_b[t], h_f)

        # reconstruction
        self.final_fusion = FinalFusion(n_feats)
        to_pixels = nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1)
        _init_scaled(to_pixels, 1e-3)  # initial output ≈ bicubic, gradients still flow
        self.upsample = nn.Sequential(to_pixels, nn.PixelShuffle(scale))

        # layer activity (device-side sums; not part of checkpoints)
        self._activity_names = (
            [f"Backward_Block_{i + 1:02d}" for i in range(half)]
            + [f"Forward_Block_{i + 1:02d}" for i in range(half)]
            + ["Final_Fusion"]
        )
        self.register_buffer("activity_sum", torch.zeros(n_blocks + 1), persistent=False)
        self.register_buffer("activity_count", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, lr: Tensor) -> Tensor:  # lr: [B, T, 3, h, w]
        _, t, c, h, w = lr.shape
        if t != self.num_frames or c != 3:
            raise ValueError(f"expected [B, {self.num_frames}, 3, h, w], got {tuple(lr.shape)}")
        centre, track = t // 2, self.track_activity
        # Frames go through the convs as 4-D tensors so channels_last carries through.
        frames = lr.transpose(0, 1).flatten(0, 1)  # [T·B, 3, h, w], frame-major
        feats = self.feat_extract(frames).chunk(t, dim=0)  # T × [B, F, h, w]

        # backward branch: t = T−1 … 0; only states up to the centre are needed later
        h_b = torch.zeros_like(feats[0])  # [B, F, h, w]
        states_b: list[Tensor] = [h_b] * (centre + 1)
        act_b: list[Tensor] = []  # filled only when tracking activity
        for i in range(t - 1, -1, -1):
            h_b, act = self._step(self.backward_trunk, torch.cat([feats[i], h_b], dim=1))
            if i <= centre:
                states_b[i] = h_b
            if act is not None:
                act_b.append(act)

        # forward branch: t = 0 … centre (later frames cannot reach the centre going forward)
        h_f = torch.zeros_like(feats[0])  # [B, F, h, w]
        act_f: list[Tensor] = []
        for i in range(centre + 1):
            h_f, act = self._step(
                self.forward_trunk, torch.cat([feats[i], states_b[i], h_f], dim=1)
            )
            if act is not None:
                act_f.append(act)

        # reconstruction: fuse both branches at the centre, upsample, add bicubic
        fused = self.final_fusion(torch.cat([states_b[centre], h_f], dim=1))  # [B, F, h, w]
        sr = self.upsample(fused)  # [B, 3·s², h, w] → [B, 3, H, W]
        base = F.interpolate(
            lr[:, centre],
            size=(h * self.scale, w * self.scale),
            mode="bicubic",
            align_corners=False,
        )  # [B, 3, H, W]

        if track:
            self._record_activity(act_b, act_f, fused)
        return sr + base

    def _step(self, trunk: Trunk, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """One trunk step, recomputed in backward when gradient checkpointing is on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(trunk, x, self.track_activity, use_reentrant=False)
        return trunk(x, self.track_activity)

    def _record_activity(self, act_b: list[Tensor], act_f: list[Tensor], fused: Tensor) -> None:
        """Add this call's per-block means (averaged over frames) into the device buffer."""
        per_block = torch.cat(
            [
                torch.stack(act_b).mean(dim=0),  # [T, n/2] → [n/2]
                torch.stack(act_f).mean(dim=0),  # [centre+1, n/2] → [n/2]
                fused.detach().abs().mean(dtype=torch.float32).unsqueeze(0),  # [1]
            ]
        )
        self.activity_sum.add_(per_block)
        self.activity_count.add_(1)

    def activity_names(self) -> list[str]:
        """Backward_Block_01…, Forward_Block_01…, Final_Fusion: the layer activity map's keys."""
        return list(self._activity_names)

    def read_activity(self, reset: bool = True) -> dict[str, float]:
        """Mean |activation| per block since the last reset ({} if none); syncs: logging steps."""
        return read_activity_means(
            self.activity_sum, self.activity_count, self._activity_names, reset
        )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the number the panel and logs show)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
