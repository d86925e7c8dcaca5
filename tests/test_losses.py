"""Loss terms against hand-written references, float32 under autocast, the sharpness probe, and
the VGG perceptual network loaded from a local torchvision-layout file (or refused clearly)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from vsr_async.errors import ConfigError
from vsr_async.nn.losses import LossComputer, LossTerm, LossWeights, sharpness_ratio
from vsr_async.nn.perceptual import VGGPerceptual, load_perceptual
from vsr_async.settings import Config

# torchvision's vgg16 "D" configuration: conv widths, "M" = max-pool.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _torchvision_vgg16_state_dict(
    seed: int = 0, classifier: bool = False
) -> dict[str, torch.Tensor]:
    """The key names and shapes of `torchvision.models.vgg16().state_dict()`, random values.

    Built from the published layout, independently of `vsr_async.nn.perceptual`, so a mismatch in
    our indices would show up as a load failure.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    index, c_in = 0, 3
    for item in VGG16_CFG:
        if item == "M":
            index += 1
            continue
        fan_in = c_in * 9
        state[f"features.{index}.weight"] = (
            torch.randn(item, c_in, 3, 3, generator=g) * (2 / fan_in) ** 0.5
        )
        state[f"features.{index}.bias"] = torch.randn(item, generator=g) * 0.01
        index, c_in = index + 2, item  # conv then ReLU
    if classifier:  # names as in torchvision; tiny stand-ins for the 100M-parameter tensors
        for i in (0, 3, 6):
            state[f"classifier.{i}.weight"] = torch.zeros(4, 4)
            state[f"classifier.{i}.bias"] = torch.zeros(4)
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.save(_torchvision_vgg16_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vgg(vgg_file: Path) -> VGGPerceptual:
    return load_perceptual(vgg_file)


def _photo_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A real-photo crop [1, 3, size, size] and a blurred, slightly noisy copy of it."""
    photo = torch.from_numpy(data.coffee().astype(np.float32) / 255.0).permute(2, 0, 1)
    gt = photo[None, :, 150 : 150 + size, 250 : 250 + size].contiguous()
    g = torch.Generator().manual_seed(0)
    blurred = F.avg_pool2d(F.pad(gt, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (blurred + 0.01 * torch.randn(gt.shape, generator=g)).clamp(0, 1), gt


# --- the pixel terms ---------------------------------------------------------------------------


def test_terms_match_hand_written_references() -> None:
    g = torch.Generator().manual_seed(1)
    sr, gt = torch.rand(2, 3, 16, 24, generator=g), torch.rand(2, 3, 16, 24, generator=g)
    total, terms = LossComputer()(sr, gt, LossWeights(l1=1.0, ms=0.0, gradient=0.0))
    assert tuple(LossTerm) == ("l1", "ms", "gradient", "perceptual")
    assert terms.shape == (4,) and terms.dtype == torch.float32 and total.shape == ()

    a, b = sr.double().numpy(), gt.double().numpy()
    l1 = np.abs(a - b).mean()

    def pool(x: np.ndarray, k: int) -> np.ndarray:
        n, c, h, w = x.shape
        return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))

    ms = 0.5 * (np.abs(pool(a, 2) - pool(b, 2)).mean() + np.abs(pool(a, 4) - pool(b, 4)).mean())
    dx = lambda x: np.diff(x, axis=3)  # noqa: E731
    dy = lambda x: np.diff(x, axis=2)  # noqa: E731
    grad = 0.5 * (np.abs(dx(a) - dx(b)).mean() + np.abs(dy(a) - dy(b)).mean())
    np.testing.assert_allclose(terms.numpy(), [l1, ms, grad, 0.0], rtol=1e-5, atol=1e-7)
    assert total.item() == pytest.approx(l1, rel=1e-5)


def test_total_is_the_weighted_sum_and_follows_new_weights() -> None:
    sr, gt = _photo_pair()
    sr.requires_grad_(True)
    loss = LossComputer()
    for w in (LossWeights(1.0, 0.5, 0.25, 0.0), LossWeights(0.2, 2.0, 0.0, 0.0)):
        total, terms = loss(sr, gt, w)
        expected = w.l1 * terms[0] + w.ms * terms[1] + w.gradient * terms[2]
        assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert total.requires_grad and not terms.requires_grad  # terms are for logging only


def test_identical_images_give_zero_loss() -> None:
    _, gt = _photo_pair()
    total, terms = LossComputer()(gt.clone(), gt, LossWeights(1.0, 1.0, 1.0, 0.0))
    assert total.item() == 0.0 and terms.abs().sum().item() == 0.0


def test_loss_is_float32_under_bf16_autocast() -> None:
    sr, gt = _photo_pair()
    reference_total, reference_terms = LossComputer()(sr, gt, LossWeights(1.0, 1.0, 1.0, 0.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = LossComputer()(
            sr.bfloat16(), gt, LossWeights(1.0, 1.0, 1.0, 0.0)
        )  # a bf16 network output, as under autocast
    assert total.dtype == terms.dtype == torch.float32
    # Only the rounding of sr to bf16 differs, not the arithmetic of the loss.
    torch.testing.assert_close(terms, reference_terms, rtol=2e-2, atol=1e-4)
    assert total.item() == pytest.approx(reference_total.item(), rel=2e-2)


def test_gradient_reaches_sr_only() -> None:
    sr, gt = _photo_pair()
    sr.requires_grad_(True)
    total, _ = LossComputer()(sr, gt, LossWeights(1.0, 0.5, 0.5, 0.0))
    total.backward()
    assert sr.grad is not None and sr.grad.abs().sum().item() > 0
    assert gt.grad is None


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        LossComputer()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), LossWeights())


def test_loss_weights_are_frozen_and_come_from_config() -> None:
    weights = LossWeights.from_config(Config(L1_WEIGHT=0.5, MS_WEIGHT=0.25, GRAD_WEIGHT=0.1))
    assert weights == LossWeights(l1=0.5, ms=0.25, gradient=0.1, perceptual=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.l1 = 2.0  # type: ignore[misc]


def test_losses_need_no_host_sync() -> None:
    """On the meta device every value read would raise."""
    sr = torch.empty(2, 3, 16, 16, device="meta", requires_grad=True)
    gt = torch.empty(2, 3, 16, 16, device="meta")
    perceptual = VGGPerceptual().to("meta")
    total, terms = LossComputer(perceptual)(sr, gt, LossWeights(1.0, 1.0, 1.0, 1.0))
    assert total.shape == () and terms.shape == (4,) and total.device.type == "meta"
    assert sharpness_ratio(sr, gt).shape == ()


# --- sharpness probe ---------------------------------------------------------------------------


def test_sharpness_ratio_tells_blur_from_oversharpening() -> None:
    _, gt = _photo_pair(48)
    blurred = F.avg_pool2d(F.pad(gt, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sharpened = gt + 1.0 * (gt - blurred)  # unsharp mask
    assert sharpness_ratio(gt.clone(), gt).item() == pytest.approx(1.0, abs=1e-6)
    assert sharpness_ratio(blurred, gt).item() < 0.8
    assert sharpness_ratio(sharpened, gt).item() > 1.2
    ratio = sharpness_ratio(blurred.requires_grad_(True), gt)
    assert ratio.shape == () and ratio.dtype == torch.float32 and not ratio.requires_grad


# --- perceptual term ---------------------------------------------------------------------------


class _CountingFeatures(nn.Module):
    """A stand-in feature network that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 2.0


def test_perceptual_is_computed_only_when_weighted_and_given() -> None:
    sr, gt = _photo_pair()
    network = _CountingFeatures()
    _, terms = LossComputer(network)(sr, gt, LossWeights(1.0, 0.0, 0.0, 0.0))
    assert network.calls == 0 and terms[3].item() == 0.0
    _, terms = LossComputer(None)(sr, gt, LossWeights(1.0, 0.0, 0.0, 1.0))
    assert terms[3].item() == 0.0
    total, terms = LossComputer(network)(sr, gt, LossWeights(0.0, 0.0, 0.0, 0.5))
    assert network.calls == 2  # one pass for sr, one (without a graph) for gt
    assert terms[3].item() == pytest.approx(2.0 * (sr - gt).abs().mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * terms[3].item(), rel=1e-6)


def test_load_perceptual_reads_torchvision_layout(vgg_file: Path, vgg: VGGPerceptual) -> None:
    saved = torch.load(vgg_file, weights_only=True)
    for index in (0, 2, 5, 7, 10, 12, 14):  # every conv up to relu3_3
        torch.testing.assert_close(vgg.features[index].weight, saved[f"features.{index}.weight"])
        torch.testing.assert_close(vgg.features[index].bias, saved[f"features.{index}.bias"])
    assert len(vgg.features) == 16  # cut after relu3_3
    feats = vgg(torch.rand(2, 3, 32, 40))
    assert feats.shape == (2, 256, 8, 10)


def test_load_perceptual_accepts_full_vgg16_and_deeper_layer(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(_torchvision_vgg16_state_dict(seed=3, classifier=True), path)
    network = load_perceptual(path, layer="relu4_3")
    assert network(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_perceptual_network_is_frozen(vgg: VGGPerceptual) -> None:
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    assert all(key.startswith("features.") for key in vgg.state_dict())  # mean/std not saved


def test_perceptual_term_with_real_vgg_layout(vgg: VGGPerceptual) -> None:
    sr, gt = _photo_pair()
    sr.requires_grad_(True)
    loss = LossComputer(vgg)
    weights = LossWeights(0.0, 0.0, 0.0, 1.0)
    total, terms = loss(sr, gt, weights)
    assert terms[3].item() > 0 and total.item() == pytest.approx(terms[3].item())
    total.backward()
    assert sr.grad is not None and sr.grad.abs().sum().item() > 0  # flows through frozen VGG
    _, same = loss(gt.clone(), gt, weights)
    assert same[3].item() == 0.0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a checkpoint", "not a loadable PyTorch state_dict"),
        ("tensor", "holds a Tensor"),
        ("wrong_keys", "missing features.0.weight"),
        ("wrong_shapes", "wrong shape features.0.weight"),
        ("pickled_object", "not a loadable PyTorch state_dict"),
    ],
)
def test_bad_weight_files_are_clear_config_errors(
    tmp_path: Path, content: object, reason: str
) -> None:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "wrong_keys":  # e.g. a VSR checkpoint given by mistake
        torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, path)
    elif content == "wrong_shapes":  # e.g. a VGG with other widths
        state = _torchvision_vgg16_state_dict()
        state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
        torch.save(state, path)
    else:  # arbitrary pickled objects are refused by weights_only=True, never executed
        torch.save({"features.0.weight": Path("/")}, path)
    with pytest.raises(ConfigError, match=reason) as info:
        load_perceptual(path)
    assert info.value.key == "PERCEPTUAL_WEIGHTS_PATH"
    assert str(path) in str(info.value)


def test_missing_weight_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_perceptual(tmp_path / "absent.pth")
    assert info.value.key == "PERCEPTUAL_WEIGHTS_PATH"
    assert "point it at a torchvision VGG16 state_dict" in str(info.value)
