"""PSNR/SSIM against scikit-image on its real sample photographs, and the quality formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data, filters, metrics, transform

from vsr_async.metrics import psnr, quality, ssim

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")  # camera is grayscale: C = 1


def _photo(name: str) -> np.ndarray:
    """A central 250×330 crop in [0, 1]: real content, small enough for a 2-core CI."""
    image = getattr(data, name)().astype(np.float64) / 255.0
    top, left = (image.shape[0] - 250) // 2, (image.shape[1] - 330) // 2
    return image[top : top + 250, left : left + 330]


def _distortions(image: np.ndarray) -> dict[str, np.ndarray]:
    """What a VSR validation meets: sensor noise, blur, and the bicubic ×3 round trip."""
    rng = np.random.default_rng(0)
    axis = -1 if image.ndim == 3 else None
    h, w = image.shape[:2]
    small = transform.resize(image, (h // 3, w // 3), order=3, anti_aliasing=True)
    return {
        "noise": np.clip(image + rng.normal(0.0, 0.04, image.shape), 0, 1),
        "blur": filters.gaussian(image, sigma=1.2, channel_axis=axis),
        "bicubic_x3": np.clip(transform.resize(small, image.shape, order=3), 0, 1),
        "blur_noise": np.clip(
            filters.gaussian(image, sigma=0.8, channel_axis=axis)
            + rng.normal(0.0, 0.02, image.shape),
            0,
            1,
        ),
    }


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """[H, W, C] or [H, W] float in [0, 1] → float32 [C, H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).float()
    return t.permute(2, 0, 1) if t.dim() == 3 else t.unsqueeze(0)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 [C, H, W] → float64 [H, W, C] holding exactly the values the metric saw."""
    return t.double().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module", params=PHOTOS)
def photo(request: pytest.FixtureRequest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = _photo(request.param)
    return _to_tensor(image), {k: _to_tensor(v) for k, v in _distortions(image).items()}


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return metrics.structural_similarity(
        _to_numpy(a),
        _to_numpy(b),
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
    )


def test_psnr_and_ssim_match_skimage_on_real_photos(photo) -> None:
    gt, distorted = photo
    for name, image in distorted.items():
        ref_psnr = metrics.peak_signal_noise_ratio(_to_numpy(gt), _to_numpy(image), data_range=1)
        ref_ssim = _skimage_ssim(gt, image)
        got_psnr, got_ssim = psnr(image, gt), ssim(image, gt)
        assert got_psnr.shape == () and got_ssim.shape == ()
        assert got_psnr.item() == pytest.approx(ref_psnr, abs=1e-4), name
        assert got_ssim.item() == pytest.approx(ref_ssim, abs=1e-4), name
        assert 15 < ref_psnr < 45 and 0.2 < ref_ssim < 0.99, f"{name}: distortion not realistic"


def test_batched_equals_per_image(photo) -> None:
    gt, distorted = photo
    stack = torch.stack(list(distorted.values()))  # [N, C, H, W]
    gts = gt.expand_as(stack)
    batched_psnr, batched_ssim = psnr(stack, gts), ssim(stack, gts)
    assert batched_psnr.shape == batched_ssim.shape == (len(distorted),)
    for i, image in enumerate(distorted.values()):
        assert batched_psnr[i].item() == pytest.approx(psnr(image, gt).item(), abs=1e-6)
        assert batched_ssim[i].item() == pytest.approx(ssim(image, gt).item(), abs=1e-7)


def test_float64_input_and_argument_symmetry() -> None:
    image = _photo("chelsea")
    blurred = filters.gaussian(image, sigma=2.0, channel_axis=-1)
    a, b = _to_tensor(image).double(), _to_tensor(blurred).double()
    ref = metrics.structural_similarity(
        image,
        blurred,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
    )
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-6)
    assert ssim(b, a).item() == pytest.approx(ssim(a, b).item(), abs=1e-7)
    assert psnr(a, b).dtype == torch.float32


def test_identical_images() -> None:
    image = _to_tensor(_photo("coffee"))
    assert psnr(image, image).item() == math.inf  # documented: mse 0 → +inf
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)


def test_worse_distortion_scores_lower() -> None:
    image = _photo("astronaut")
    gt = _to_tensor(image)
    mild = _to_tensor(filters.gaussian(image, sigma=0.7, channel_axis=-1))
    strong = _to_tensor(filters.gaussian(image, sigma=2.5, channel_axis=-1))
    assert psnr(mild, gt) > psnr(strong, gt)
    assert ssim(mild, gt) > ssim(strong, gt)


def test_no_host_sync_on_meta_device() -> None:
    """Meta tensors have no values: any .item()/bool()/tolist() inside would raise."""
    a = torch.empty(2, 3, 32, 40, device="meta")
    assert psnr(a, a).shape == (2,) and psnr(a, a).device.type == "meta"
    assert ssim(a, a).shape == (2,) and ssim(a, a).device.type == "meta"
    assert ssim(a[0], a[0]).shape == ()


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(3, 16, 16), torch.zeros(3, 16, 17))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(3, 10, 32), torch.zeros(3, 10, 32))
    with pytest.raises(ValueError, match=r"\[C,H,W\]"):
        ssim(torch.zeros(16, 16), torch.zeros(16, 16))


@pytest.mark.parametrize(
    ("psnr_db", "ssim_value", "expected"),
    [
        (20.0, 0.5, 0.15),  # PSNR term 0 at 20 dB
        (35.0, 0.9, 0.7 * 0.5 + 0.27),
        (50.0, 1.0, 1.0),  # both terms at their maximum
        (80.0, 1.0, 1.0),  # PSNR term clipped at 1
        (math.inf, 0.5, 0.85),  # identical images: PSNR +inf counts as 1
        (10.0, 0.4, 0.12),  # PSNR term clipped at 0
        (10.0, -0.5, 0.0),  # negative SSIM: total clipped at 0
        (-math.inf, 0.0, 0.0),
    ],
)
def test_quality_formula(psnr_db: float, ssim_value: float, expected: float) -> None:
    got = quality(psnr_db, ssim_value)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)
    as_tensor = quality(torch.tensor(psnr_db), torch.tensor(ssim_value))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == ()
    assert as_tensor.item() == pytest.approx(expected, abs=1e-6)


def test_quality_tensor_is_elementwise_and_mixes_with_floats() -> None:
    p = torch.tensor([15.0, 20.0, 35.0, 60.0])
    s = torch.tensor([0.3, 0.5, 0.9, 0.99])
    q = quality(p, s)
    assert isinstance(q, torch.Tensor) and q.shape == (4,)
    expected = [quality(float(a), float(b)) for a, b in zip(p, s, strict=True)]
    assert q.tolist() == pytest.approx(expected, abs=1e-6)
    mixed = quality(p, 0.5)
    assert isinstance(mixed, torch.Tensor)
    assert mixed.tolist() == pytest.approx([quality(float(a), 0.5) for a in p], abs=1e-6)


def test_quality_propagates_nan() -> None:
    assert math.isnan(quality(math.nan, 0.5))
    assert math.isnan(quality(30.0, math.nan))
    assert torch.isnan(quality(torch.tensor(math.nan), torch.tensor(0.5)))
