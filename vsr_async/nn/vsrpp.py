"""VSRBidirectional_3x: the predecessor's (VSR++) model, so its checkpoints continue here.

Same architecture, same forward maths and the same parameter names as its `core/model.py`
(state at its HEAD: LeakyReLU 0.1, unscaled residual blocks), so `load_state_dict(strict=True)`
takes its `model_state_dict` as it is. What differs is only how it is run: no host sync per
block (activity is summed on the device on logging steps, like `VSRNet`), gradient checkpointing
per propagation step instead of per block (same numerics), and `channels_last`-friendly 4-D convs.

Pure compute: no I/O, no asyncio, no host syncs in `forward` (`read_activity` is the one
deliberate sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vsr_async.nn.activity import read_activity_means

SCALE = 3  # fixed by the architecture (PixelShuffle(3), bilinear ×3 base)


class ResidualBlock(nn.Module):
    """conv3×3 – LeakyReLU(0.1) – conv3×3 plus identity (unscaled); [B, F, h, w] → same."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.relu = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class FuseConv(nn.Module):
    """1×1 conv [B, 2F, h, w] → [B, F, h, w], no activation. The wrapper exists for the
    parameter names (`<name>.conv.weight`) of the predecessor's `TrackedConv2d`."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * n_feats, n_feats, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Trunk(nn.ModuleList):
    """The ResidualBlocks of one direction (a ModuleList: names `<trunk>.<i>.conv1.weight`).

    Returns the output [B, F, h, w] and, when tracking, each block's mean |output| as a float32
    [n] tensor (returned, not stored, so a checkpointed recompute cannot count twice).
    """

    def forward(self, x: Tensor, track: bool) -> tuple[Tensor, Tensor | None]:
        activity = []
        for block in self:
            x = block(x)
            if track:
                activity.append(x.detach().abs().mean(dtype=torch.float32))
        return x, torch.stack(activity) if track else None


def propagation_step(
    fuse: FuseConv, trunk: Trunk, x: Tensor, track: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One step of one direction: fuse(cat(state, frame feature)) → trunk; the unit gradient
    checkpointing recomputes. Returns the new state [B, F, h, w], the fuse conv's mean |output|
    [1] and the blocks' [n] (None unless tracking)."""
    fused = fuse(x)  # [B, 2F, h, w] → [B, F, h, w]
    fuse_activity = fused.detach().abs().mean(dtype=torch.float32).unsqueeze(0)  # [1]
    out, blocks = trunk(fused, track)
    return out, fuse_activity, blocks


class VSRBidirectional_3x(nn.Module):  # the predecessor's class name, kept
    """The predecessor's bidirectional VSR model, ×3.

    lr [B, T, 3, h, w] in [0, 1] → the centre frame, [B, 3, 3h, 3w]. Both directions start from
    the centre frame's features (not zeros): backward runs centre+1 … T−1, forward centre−1 … 0,
    each step fuses (1×1) the state with that frame's features and runs the direction's trunk.
    The two end states are fused (1×1), upsampled (conv → PixelShuffle(3) → conv) and added to
    the bilinear ×3 upscale of the centre LR frame.

    `track_activity` / `read_activity()` / `gradient_checkpointing`: as in `VSRNet`.
    """

    activity_sum: Tensor
    activity_count: Tensor

    def __init__(self, n_feats: int, n_blocks: int, num_frames: int, scale: int = SCALE) -> None:
        super().__init__()
        if scale != SCALE:
            raise ValueError(f"VSRBidirectional_3x upscales ×3 only, got scale {scale}")
        if num_frames < 1 or num_frames % 2 == 0:
            raise ValueError(f"num_frames must be odd (centre frame), got {num_frames}")
        self.n_feats = n_feats
        self.n_blocks = n_blocks
        self.num_frames = num_frames
        self.scale = SCALE
        half = max(1, n_blocks // 2)  # the predecessor's split (an odd N_BLOCKS rounds down)
        self.track_activity = False
        self.gradient_checkpointing = False

        # registration order = the predecessor's (parameter and optimizer-state order)
        self.feat_extract = nn.Conv2d(3, n_feats, 3, 1, 1)
        self.backward_fuse = FuseConv(n_feats)
        self.forward_fuse = FuseConv(n_feats)
        self.backward_trunk = Trunk(ResidualBlock(n_feats) for _ in range(half))
        self.forward_trunk = Trunk(ResidualBlock(n_feats) for _ in range(half))
        self.fusion = FuseConv(n_feats)
        self.upsample = nn.Sequential(
            nn.Conv2d(n_feats, n_feats * SCALE * SCALE, 3, 1, 1),
            nn.PixelShuffle(SCALE),
            nn.Conv2d(n_feats, 3, 3, 1, 1),
        )

        # layer activity (device-side sums; not part of checkpoints)
        self._activity_names = (
            [f"Backward_Block_{i + 1:02d}" for i in range(half)]
            + ["Backward_Fuse"]
            + [f"Forward_Block_{i + 1:02d}" for i in range(half)]
            + ["Forward_Fuse", "Final_Fusion"]
        )
        n_entries = len(self._activity_names)
        self.register_buffer("activity_sum", torch.zeros(n_entries), persistent=False)
        self.register_buffer("activity_count", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, lr: Tensor) -> Tensor:  # lr: [B, T, 3, h, w]
        b, t, c = lr.shape[:3]
        if t != self.num_frames or c != 3:
            raise ValueError(f"expected [B, {self.num_frames}, 3, h, w], got {tuple(lr.shape)}")
        centre, track = t // 2, self.track_activity

        # shared feature extraction over all frames (batch-major, as the predecessor)
        feats = self.feat_extract(lr.flatten(0, 1))  # [B·T, 3, h, w] → [B·T, F, h, w]
        feats = feats.unflatten(0, (b, t))  # [B, T, F, h, w]
        centre_feat = feats[:, centre].clone()  # [B, F, h, w]: both directions start here

        # backward: centre → T−1; forward: centre → 0 (each direction shares its fuse and trunk)
        back, act_b = self._propagate(
            self.backward_fuse, self.backward_trunk, centre_feat, feats, range(centre + 1, t)
        )
        forw, act_f = self._propagate(
            self.forward_fuse, self.forward_trunk, centre_feat, feats, range(centre - 1, -1, -1)
        )

        fused = self.fusion(torch.cat([back, forw], dim=1))  # [B, 2F, h, w] → [B, F, h, w]
        base = F.interpolate(
            lr[:, centre], scale_factor=SCALE, mode="bilinear", align_corners=False
        )  # [B, 3, 3h, 3w]
        sr = self.upsample(fused)  # [B, F, h, w] → [B, 9F, h, w] → [B, F, 3h, 3w] → [B, 3, 3h, 3w]

        if track:
            self._record_activity(act_b, act_f, fused)
        return sr + base

    def _propagate(
        self, fuse: FuseConv, trunk: Trunk, state: Tensor, feats: Tensor, order: range
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor | None]]]:
        """One direction over the frames in `order` (fuse and trunk shared by its steps); the
        end state [B, F, h, w] and each step's activities."""
        activity = []
        for i in order:
            x = torch.cat([state, feats[:, i]], dim=1)  # [B, 2F, h, w]
            if self.gradient_checkpointing and torch.is_grad_enabled():
                state, fuse_act, blocks = checkpoint(
                    propagation_step, fuse, trunk, x, self.track_activity, use_reentrant=False
                )
            else:
                state, fuse_act, blocks = propagation_step(fuse, trunk, x, self.track_activity)
            activity.append((fuse_act, blocks))
        return state, activity

    def _record_activity(
        self,
        act_b: list[tuple[Tensor, Tensor | None]],
        act_f: list[tuple[Tensor, Tensor | None]],
        fused: Tensor,
    ) -> None:
        """Add this call's means (averaged over propagation steps) into the device buffer."""
        half = len(self.backward_trunk)
        parts = []
        for steps in (act_b, act_f):
            if steps:  # NUM_FRAMES 1 has no propagation step: its entries stay at 0
                fuse = torch.stack([f for f, _ in steps]).mean(dim=0)  # [1]
                blocks = torch.stack([bl for _, bl in steps if bl is not None]).mean(dim=0)  # [n]
            else:
                fuse, blocks = fused.new_zeros(1), fused.new_zeros(half)
            parts += [blocks.float(), fuse.float()]
        parts.append(fused.detach().abs().mean(dtype=torch.float32).unsqueeze(0))
        self.activity_sum.add_(torch.cat(parts))
        self.activity_count.add_(1)

    def activity_names(self) -> list[str]:
        """Backward_Block_01…, Backward_Fuse, Forward_Block_01…, Forward_Fuse, Final_Fusion:
        the predecessor's TensorBoard `Layers/…` names."""
        return list(self._activity_names)

    def read_activity(self, reset: bool = True) -> dict[str, float]:
        """Mean |activation| per entry since the last reset ({} if none); syncs: logging steps."""
        return read_activity_means(
            self.activity_sum, self.activity_count, self._activity_names, reset
        )
