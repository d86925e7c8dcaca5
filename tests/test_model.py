"""VSRNet: shapes, start near bicubic, checkpointing/channels_last/bf16 equivalence, layer activity
without host syncs, torch.compile, and that a tiny model learns one real batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch.overrides import TorchFunctionMode

from vsr_async.metrics import psnr
from vsr_async.nn.losses import LossComputer, LossWeights
from vsr_async.nn.model import VSRNet, count_parameters


def _bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Reference: bicubic upsampling of the centre frame, [B, T, 3, h, w] → [B, 3, H, W]."""
    centre = lr[:, lr.shape[1] // 2]
    return F.interpolate(centre, scale_factor=scale, mode="bicubic", align_corners=False)


def _real_clip(t: int, size: int, scale: int, top: int = 250, left: int = 200):
    """A short clip from a real photo with horizontal camera motion of 1 GT pixel per frame.

    Returns lr [1, T, 3, size, size] and the centre frame's gt [1, 3, size·s, size·s].
    """
    photo = torch.from_numpy(data.astronaut().astype(np.float32) / 255.0).permute(2, 0, 1)
    hr = size * scale
    frames = []
    for i in range(t):
        x = left + i - t // 2
        crop = photo[None, :, top : top + hr, x : x + hr]
        small = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)
        frames.append(small.clamp(0, 1))
    gt = photo[None, :, top : top + hr, left : left + hr]
    return torch.stack(frames, dim=1), gt


def _perturbed(model: VSRNet, seed: int = 0) -> VSRNet:
    """Give the output conv real weights, so every layer's gradient is far from zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv = model.upsample[0]
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("frames", [1, 3, 5])
def test_output_shape(scale: int, frames: int) -> None:
    model = VSRNet(n_feats=8, n_blocks=2, num_frames=frames, scale=scale)
    lr = torch.rand(2, frames, 3, 6, 7)  # non-square on purpose
    sr = model(lr)
    assert sr.shape == (2, 3, 6 * scale, 7 * scale)
    assert sr.dtype == torch.float32 and torch.isfinite(sr).all()


def test_constructor_and_input_checks() -> None:
    with pytest.raises(ValueError, match="even"):
        VSRNet(8, 3, 3, 2)
    with pytest.raises(ValueError, match="odd"):
        VSRNet(8, 2, 4, 2)
    with pytest.raises(ValueError, match="scale"):
        VSRNet(8, 2, 3, 5)
    with pytest.raises(ValueError, match=r"\[B, 3, 3, h, w\]"):
        VSRNet(8, 2, 3, 2)(torch.rand(1, 5, 3, 8, 8))


def test_untrained_output_is_close_to_bicubic_and_every_layer_learns() -> None:
    torch.manual_seed(0)
    model = VSRNet(n_feats=32, n_blocks=4, num_frames=5, scale=3)
    lr, gt = _real_clip(5, 16, 3)
    sr = model(lr)
    bicubic = _bicubic(lr, 3)
    assert (sr - bicubic).abs().max().item() < 5e-3
    assert psnr(sr.detach().clamp(0, 1)[0], bicubic.clamp(0, 1)[0]).item() > 55
    # Near-zero (not zero) init: the first backward already reaches every parameter.
    F.l1_loss(sr, gt).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name


def test_count_parameters_matches_the_architecture() -> None:
    f, n, s = 8, 4, 3
    conv = lambda c_in, c_out, k: c_in * c_out * k * k + c_out  # noqa: E731
    expected = (
        conv(3, f, 3)  # feature extraction
        + conv(2 * f, f, 1)  # backward fusion
        + conv(3 * f, f, 1)  # forward fusion
        + n * 2 * conv(f, f, 3)  # ResBlocks, two convs each
        + conv(2 * f, f, 1)  # final fusion
        + conv(f, 3 * s * s, 3)  # upsampling conv
    )
    assert count_parameters(VSRNet(f, n, 3, s)) == expected


def test_gradient_checkpointing_gives_same_output_and_gradients() -> None:
    torch.manual_seed(0)
    plain = _perturbed(VSRNet(16, 4, 5, 2))
    ckpt = _perturbed(VSRNet(16, 4, 5, 2))
    ckpt.load_state_dict(plain.state_dict())
    ckpt.gradient_checkpointing = True
    plain.track_activity = ckpt.track_activity = True
    lr, gt = _real_clip(5, 12, 2)

    out_plain, out_ckpt = plain(lr), ckpt(lr)
    F.l1_loss(out_plain, gt).backward()
    F.l1_loss(out_ckpt, gt).backward()

    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    # The recomputation in backward must not count the activity a second time.
    assert ckpt.activity_count.item() == 1
    act_plain, act_ckpt = plain.read_activity(), ckpt.read_activity()
    assert act_ckpt == pytest.approx(act_plain, rel=1e-6)


def test_channels_last_gives_same_output_and_keeps_the_format() -> None:
    torch.manual_seed(0)
    reference = _perturbed(VSRNet(16, 2, 3, 3))
    fast = VSRNet(16, 2, 3, 3)
    fast.load_state_dict(reference.state_dict())
    fast.to(memory_format=torch.channels_last)
    seen = []
    fast.final_fusion.register_forward_hook(lambda m, i, o: seen.append(o))
    lr, _ = _real_clip(3, 10, 3)
    torch.testing.assert_close(fast(lr), reference(lr), rtol=1e-5, atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_on_cpu_runs_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = _perturbed(VSRNet(16, 2, 3, 2))
    seen = []
    model.final_fusion.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    lr, gt = _real_clip(3, 12, 2)
    reference = model(lr).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sr = model(lr)
    assert seen[-1] == torch.bfloat16  # the convolutions really ran in bf16
    assert sr.dtype == torch.float32  # bf16 residual + fp32 bicubic
    assert torch.isfinite(sr).all()
    assert (sr.detach() - reference).abs().max().item() < 3e-2
    F.l1_loss(sr, gt).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_activity_names_and_read_activity() -> None:
    model = VSRNet(8, 4, 3, 2)
    assert model.activity_names() == [
        "Backward_Block_01",
        "Backward_Block_02",
        "Forward_Block_01",
        "Forward_Block_02",
        "Final_Fusion",
    ]
    lr = torch.rand(2, 3, 3, 8, 8)
    model.track_activity = True
    model(lr)
    first = model.read_activity(reset=False)
    assert list(first) == model.activity_names()
    assert all(math.isfinite(v) and v > 0 for v in first.values())
    # A second identical call leaves the mean per call unchanged.
    model(lr)
    assert model.read_activity() == pytest.approx(first, rel=1e-6)
    assert model.read_activity() == {}  # reset: nothing since the last read


def test_activity_is_the_frame_mean_of_each_blocks_mean_abs_output() -> None:
    torch.manual_seed(0)
    model = VSRNet(8, 2, 3, 2)
    outputs: dict[str, list[torch.Tensor]] = {"b": [], "f": [], "final": []}
    model.backward_trunk.blocks[0].register_forward_hook(lambda m, i, o: outputs["b"].append(o))
    model.forward_trunk.blocks[0].register_forward_hook(lambda m, i, o: outputs["f"].append(o))
    model.final_fusion.register_forward_hook(lambda m, i, o: outputs["final"].append(o))
    model.track_activity = True
    model(torch.rand(1, 3, 3, 8, 8))
    activity = model.read_activity()
    assert len(outputs["b"]) == 3 and len(outputs["f"]) == 2  # forward branch stops at the centre
    mean_abs = lambda xs: sum(x.abs().mean().item() for x in xs) / len(xs)  # noqa: E731
    assert activity["Backward_Block_01"] == pytest.approx(mean_abs(outputs["b"]), rel=1e-5)
    assert activity["Forward_Block_01"] == pytest.approx(mean_abs(outputs["f"]), rel=1e-5)
    assert activity["Final_Fusion"] == pytest.approx(mean_abs(outputs["final"]), rel=1e-5)


class _CallRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_nothing_is_recorded_or_computed_when_tracking_is_off() -> None:
    model = VSRNet(8, 2, 3, 2)
    lr = torch.rand(1, 3, 3, 8, 8)
    with _CallRecorder() as recorder:
        model(lr)
    assert "abs" not in recorder.names and "add_" not in recorder.names
    assert model.activity_count.item() == 0 and model.activity_sum.abs().sum().item() == 0
    assert model.read_activity() == {}


def test_activity_buffers_stay_out_of_checkpoints() -> None:
    model = VSRNet(8, 2, 3, 2)
    assert not any(key.startswith("activity") for key in model.state_dict())


def test_tracked_forward_needs_no_host_sync() -> None:
    """On the meta device every value read (.item(), bool(), tolist()) would raise."""
    model = VSRNet(8, 2, 3, 2).to("meta")
    model.track_activity = True
    sr = model(torch.empty(2, 3, 3, 8, 8, device="meta"))
    assert sr.shape == (2, 3, 16, 16) and sr.device.type == "meta"


def test_torch_compile_full_graph_matches_eager() -> None:
    torch.manual_seed(0)
    model = _perturbed(VSRNet(8, 2, 3, 2))
    model.track_activity = True
    lr = torch.rand(1, 3, 3, 8, 8)
    expected = model(lr).detach()
    eager_activity = model.read_activity()
    # fullgraph: any data-dependent Python control flow would be a graph break and fail here.
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(lr).detach(), expected)
    assert model.read_activity() == pytest.approx(eager_activity, rel=1e-5)


def test_tiny_model_learns_one_real_batch() -> None:
    torch.manual_seed(0)
    model = VSRNet(n_feats=32, n_blocks=2, num_frames=3, scale=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn, weights = LossComputer(), LossWeights(l1=1.0, ms=0.0, gradient=0.0, perceptual=0.0)
    lr, gt = _real_clip(3, 16, 2)
    losses = []
    for _ in range(50):
        total, _ = loss_fn(model(lr), gt, weights)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert sum(losses[-10:]) / 10 < 0.8 * losses[0], losses[::10]
    with torch.no_grad():
        sr = model(lr).clamp(0, 1)
    assert psnr(sr[0], gt[0]) > psnr(_bicubic(lr, 2).clamp(0, 1)[0], gt[0]) + 1.0
