"""Y-channel PSNR/SSIM as papers report them: the metrics against scikit-image's `rgb2ycbcr` +
`peak_signal_noise_ratio` / `structural_similarity`, the same numbers at every validation
(snapshot, Statistik file, TensorBoard), and `python -m vsr_async evaluate` on a checkpoint a
real run wrote, in both dataset layouts, with its bad inputs."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SETTINGS, read_json
from skimage import color, data, filters, metrics, transform
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vsr_async.__main__ import main
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import read_rgb, write_png
from vsr_async.files.checkpoints import load_checkpoint
from vsr_async.metrics import crop_border, psnr_y, rgb_to_y, ssim_y
from vsr_async.nn.model import VSRNet
from vsr_async.runtime.launch import build_run, scan_async
from vsr_async.settings import build_config

SCALE, FRAMES = TINY_SETTINGS["SCALE"], TINY_SETTINGS["NUM_FRAMES"]


# --- reference numbers: scikit-image on numpy arrays ------------------------------------------


def sk_y(image: np.ndarray) -> np.ndarray:
    """HxWx3 float in [0, 1] → Y in [16, 235] (scikit-image's rgb2ycbcr, MATLAB's definition)."""
    return color.rgb2ycbcr(image)[..., 0]


def sk_scores(out: np.ndarray, gt: np.ndarray, border: int) -> dict[str, float]:
    """PSNR/SSIM on Y and in RGB of two HxWx3 float images in [0, 1], border cropped."""
    b = np.s_[border : out.shape[0] - border, border : out.shape[1] - border]
    ssim_args = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    y_out, y_gt = sk_y(out)[b], sk_y(gt)[b]
    return {
        "psnr_y_db": metrics.peak_signal_noise_ratio(y_gt, y_out, data_range=255),
        "ssim_y": metrics.structural_similarity(y_gt, y_out, data_range=255, **ssim_args),
        "psnr_rgb_db": metrics.peak_signal_noise_ratio(gt[b], out[b], data_range=1),
        "ssim_rgb": metrics.structural_similarity(
            gt[b], out[b], data_range=1, channel_axis=-1, **ssim_args
        ),
    }


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """[3, H, W] → HxWx3 float64 holding exactly the values the metric saw."""
    return t.double().permute(1, 2, 0).numpy()


# --- the metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("border", [0, 3, 4])
def test_y_channel_psnr_and_ssim_match_skimage(photo: str, border: int) -> None:
    image = getattr(data, photo)()[40:240, 60:300].astype(np.float64) / 255.0
    rng = np.random.default_rng(1)
    small = transform.resize(image, (image.shape[0] // 3, image.shape[1] // 3), order=3)
    distorted = {
        "bicubic_x3": np.clip(transform.resize(small, image.shape, order=3), 0, 1),
        "noise": np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1),
        "blur": filters.gaussian(image, sigma=1.0, channel_axis=-1),
    }
    gt = as_tensor(image)
    for name, array in distorted.items():
        out = as_tensor(array)
        want = sk_scores(as_numpy(out), as_numpy(gt), border)
        assert psnr_y(out, gt, border).item() == pytest.approx(want["psnr_y_db"], abs=1e-4), name
        assert ssim_y(out, gt, border).item() == pytest.approx(want["ssim_y"], abs=1e-4), name
        assert 18 < want["psnr_y_db"] < 45 and 0.3 < want["ssim_y"] < 0.99, "not realistic"
    batch = torch.stack([as_tensor(a) for a in distorted.values()])  # [N, 3, H, W]
    batched = psnr_y(batch, gt.expand_as(batch), border)
    assert batched.shape == (3,)
    for i, array in enumerate(distorted.values()):
        assert batched[i].item() == pytest.approx(psnr_y(as_tensor(array), gt, border).item())


def test_y_is_bt601_as_matlab() -> None:
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.9]])
    got = rgb_to_y(colours.view(4, 3, 1, 1)).flatten() * 255
    want = sk_y(colours.numpy()[None].astype(np.float64))[0]
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-4)
    assert got[:2].tolist() == pytest.approx([16.0, 235.0], abs=1e-3)  # black, white


def test_crop_border_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_border(torch.zeros(3, 6, 6), 3)
    with pytest.raises(ValueError, match=">= 0"):
        crop_border(torch.zeros(3, 6, 6), -1)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        rgb_to_y(torch.zeros(1, 8, 8))


# --- a real run: its validation numbers and its checkpoint ------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """The run folder of 5 steps on the tiny dataset, validated at step 5 (= its checkpoint)."""
    root = tmp_path_factory.mktemp("trained")
    config = build_config(
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(tiny_dataset),
            "DATA_ROOT": str(root / "Learn"),
            "MAX_STEPS": 5,
            "VAL_STEP_EVERY": 5,
            "LOG_TBOARD_EVERY": 5,
        }
    )

    async def train() -> Path:
        run = build_run(config, await scan_async(config), console_log=False)
        assert await asyncio.wait_for(await run.start(), 120) == 0
        return run.run_dir

    return asyncio.run(train())


def model_of(checkpoint: Path) -> VSRNet:
    state = load_checkpoint(checkpoint)
    model = VSRNet(8, 2, FRAMES, SCALE)  # TINY_SETTINGS' shape
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def outputs(model: VSRNet, lr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(model output, bicubic upscale of the centre frame), [3, H, W] clamped to [0, 1]."""
    frames = torch.from_numpy(lr).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    sr = model(frames)[0].clamp(0, 1)
    centre = frames[:, FRAMES // 2]
    bicubic = F.interpolate(centre, scale_factor=SCALE, mode="bicubic", align_corners=False)
    return sr, bicubic[0].clamp(0, 1)


def patch_pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR [T, h, w, 3], GT) of every validation pair, read with PIL."""
    pairs = []
    for gt_path in sorted((root / "Val" / "GT").iterdir()):
        gt = read_rgb(gt_path)
        lr = read_rgb(root / "Val" / "LR" / gt_path.name).reshape(FRAMES, -1, gt.shape[1] // 3, 3)
        pairs.append((gt_path.stem, lr, gt))  # names as validation shows them
    return pairs


def test_validation_y_numbers_in_statistik_snapshot_and_tensorboard(
    trained: Path, tiny_dataset: Path
) -> None:
    stats = read_json(trained / "Statistik_5.json")
    model = model_of(trained / "checkpoints" / "checkpoint_5.pt")
    images = {m["name"]: m for m in stats["validation_images"]}
    assert len(images) == 2
    for name, lr, gt in patch_pairs(tiny_dataset):
        sr, bicubic = outputs(model, lr)
        entry = images[name]
        target = as_numpy(as_tensor(gt / 255.0))
        for kind, image in (("ki", sr), ("lr", bicubic)):
            want = sk_scores(as_numpy(image), target, SCALE)  # SCALE px cropped
            assert entry[f"psnr_y_{kind}_db"] == pytest.approx(want["psnr_y_db"], abs=1e-4)
            assert entry[f"ssim_y_{kind}"] == pytest.approx(want["ssim_y"], abs=1e-4)
        # the RGB numbers keep their meaning: whole image, no crop, no Y
        assert entry["psnr_ki_db"] == pytest.approx(
            metrics.peak_signal_noise_ratio(target, as_numpy(sr), data_range=1), abs=1e-4
        )
    for key in ("psnr_y_lr_db", "psnr_y_ki_db", "ssim_y_lr", "ssim_y_ki"):
        assert stats[key] == pytest.approx(np.mean([m[key] for m in images.values()]), abs=1e-9)
    assert stats["psnr_y_gain_db"] == pytest.approx(stats["psnr_y_ki_db"] - stats["psnr_y_lr_db"])
    assert stats["psnr_y_lr_db"] != pytest.approx(stats["psnr_lr_db"], abs=0.05)  # not RGB

    events = EventAccumulator(str(trained / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag, key in (
        ("Metrics/KI_PSNR_Y", "psnr_y_ki_db"),
        ("Metrics/LR_PSNR_Y", "psnr_y_lr_db"),
        ("Metrics/PSNR_Gain_Y", "psnr_y_gain_db"),
        ("Metrics/KI_SSIM_Y", "ssim_y_ki"),
        ("Metrics/LR_SSIM_Y", "ssim_y_lr"),
    ):
        (event,) = events.Scalars(tag)
        assert event.step == 5
        assert event.value == pytest.approx(stats[key], abs=1e-4)  # float32 in the event file


def to_8_bits(image: torch.Tensor) -> np.ndarray:
    return as_numpy(image.mul(255).round().div(255))


def test_evaluate_matches_skimage_on_a_patch_dataset(
    trained: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = trained / "checkpoints" / "checkpoint_5.pt"
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", str(tiny_dataset),
                 "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads(out.read_text(encoding="utf-8"))
    assert (report["layout"], report["crop_border"], report["step"]) == ("patches", SCALE, 5)
    assert report["images_count"] == report["clips_count"] == 2
    model = model_of(checkpoint)
    clips = {c["name"]: c for c in report["clips"]}
    for name, lr, gt in patch_pairs(tiny_dataset):
        sr, bicubic = outputs(model, lr)
        (image,) = clips[name]["images"]
        target = gt / 255.0
        for kind, output in (("model", sr), ("bicubic", bicubic)):
            want = sk_scores(to_8_bits(output), target, SCALE)
            for key, value in want.items():
                assert image[kind][key] == pytest.approx(value, abs=1e-4), (name, kind, key)
    mean = report["mean_over_clips"]
    for key in ("psnr_y_db", "ssim_y", "psnr_rgb_db", "ssim_rgb"):
        values = [c["model"][key] for c in report["clips"]]
        assert mean["model"][key] == pytest.approx(np.mean(values), abs=1e-9)
        gain = mean["model"][key] - mean["bicubic"][key]
        assert mean["gain"][key] == pytest.approx(gain, abs=1e-9)
    assert f"{mean['model']['psnr_y_db']:.2f}" in printed.splitlines()[-3]  # the table's mean row
    assert f"wrote {out}" in printed


def write_frame_clips(root: Path) -> dict[str, list[np.ndarray]]:
    """A frame-layout test set (GT only: LR is the bicubic downscale): two clips, a pan each."""
    clips = {}
    for name, photo, count in (("pan_a", data.astronaut(), 4), ("pan_b", data.coffee(), 3)):
        frames = [
            np.ascontiguousarray(photo[60:108, 90 + 2 * t : 144 + 2 * t]) for t in range(count)
        ]
        (root / "GT" / name).mkdir(parents=True)
        for t, frame in enumerate(frames):
            write_png(root / "GT" / name / f"f{t:02d}.png", frame)
        clips[name] = frames
    return clips


def test_evaluate_scores_every_frame_of_a_frame_layout_clip(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every frame is scored with the NUM_FRAMES around it, the clip's ends repeated; a clip's
    numbers are the mean of its frames; the overall means weigh clips or images alike."""
    clips = write_frame_clips(tmp_path / "test_set")
    checkpoint = trained / "checkpoints" / "checkpoint_5.pt"
    out = tmp_path / "scores.json"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--dataset", str(tmp_path / "test_set")]
    assert main([*argv, "--json", str(out), "--crop-border", "2"]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert (report["layout"], report["crop_border"], report["images_count"]) == ("frames", 2, 7)
    model = model_of(checkpoint)
    for clip in report["clips"]:
        frames = clips[clip["name"]]
        lr = bicubic_downscale(np.stack(frames), SCALE)
        assert [i["name"] for i in clip["images"]] == [
            f"{clip['name']}/f{t:02d}" for t in range(len(frames))
        ]
        for t, image in enumerate(clip["images"]):
            window = [min(max(t + k, 0), len(frames) - 1) for k in (-1, 0, 1)]  # ends repeated
            sr, _ = outputs(model, lr[window])
            want = sk_scores(to_8_bits(sr), frames[t] / 255.0, 2)
            assert image["model"]["psnr_y_db"] == pytest.approx(want["psnr_y_db"], abs=1e-4)
            assert image["model"]["ssim_y"] == pytest.approx(want["ssim_y"], abs=1e-4)
        per_frame = [i["model"]["psnr_y_db"] for i in clip["images"]]
        assert clip["model"]["psnr_y_db"] == pytest.approx(np.mean(per_frame), abs=1e-9)
    by_clip = [c["model"]["psnr_y_db"] for c in report["clips"]]
    by_image = [i["model"]["psnr_y_db"] for c in report["clips"] for i in c["images"]]
    assert report["mean_over_clips"]["model"]["psnr_y_db"] == pytest.approx(np.mean(by_clip))
    assert report["mean_over_images"]["model"]["psnr_y_db"] == pytest.approx(np.mean(by_image))
    assert not math.isclose(np.mean(by_clip), np.mean(by_image), abs_tol=1e-6)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsr_async: error: "), err
    return lines[0]


def test_evaluate_bad_inputs_are_one_line_and_leave_no_file(
    trained: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = str(trained / "checkpoints" / "checkpoint_5.pt")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(Path(checkpoint).read_bytes()[:5000])
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong_frames = tmp_path / "wrong"
    for split in ("GT", "LR"):
        (wrong_frames / split).mkdir(parents=True)
    write_png(wrong_frames / "GT" / "a.png", np.zeros((48, 48, 3), np.uint8))
    write_png(wrong_frames / "LR" / "a.png", np.zeros((16 * 5, 16, 3), np.uint8))  # 5 frames
    out = tmp_path / "scores.json"
    cases: list[tuple[list[str], str]] = [
        (["--checkpoint", str(text), "--dataset", str(tiny_dataset)], "notes.txt"),
        (["--checkpoint", str(truncated), "--dataset", str(tiny_dataset)], "cut.pt"),
        (["--checkpoint", checkpoint, "--dataset", str(empty)], "empty"),
        (["--checkpoint", checkpoint, "--dataset", str(wrong_frames)], "a.png"),
        (
            ["--checkpoint", checkpoint, "--dataset", str(tiny_dataset), "--crop-border", "20"],
            "--crop-border",
        ),
        (
            [
                "--checkpoint",
                checkpoint,
                "--dataset",
                str(tiny_dataset),
                "--json",
                str(tmp_path / "missing" / "s.json"),
            ],
            "missing",
        ),
    ]
    for args, named in cases:
        json_args = [] if "--json" in args else ["--json", str(out)]
        assert main(["evaluate", *args, *json_args]) == 1, args
        assert named in one_error_line(capsys), args
        assert not out.exists() and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.pt", "empty", "notes.txt", "wrong"
    ]  # fmt: skip


def test_validation_keeps_y_null_when_the_image_is_too_small_for_the_crop() -> None:
    from vsr_async.training.validation import y_channel_scores

    gt = torch.rand(1, 3, 14, 40)
    scores = y_channel_scores(gt * 0.9, gt * 0.8, gt, border=3)  # 14 − 6 < 11: no SSIM window
    p_lr, p_ki, s_lr, s_ki = scores.tolist()
    assert math.isfinite(p_lr) and math.isfinite(p_ki)
    assert math.isnan(s_lr) and math.isnan(s_ki)
