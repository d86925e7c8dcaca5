"""vsr_async.data on real files under tmp_path: images, layouts and their errors, datasets,
augmentation, the resumable sampler and the loader."""

from __future__ import annotations

import itertools
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vsr_async.data import (
    ResumableSampler,
    TrainBatch,
    build_datasets,
    build_train_loader,
    collate_train,
    detect_layout,
    position_after,
    scan_dataset,
)
from vsr_async.data.augment import augment
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.frames import FrameTrainDataset
from vsr_async.data.images import read_rgb, read_size, to_tensor, to_uint8, write_png
from vsr_async.data.info import Clip
from vsr_async.data.patches import PatchTrainDataset
from vsr_async.data.skipping import MAX_TRIES
from vsr_async.errors import DatasetError
from vsr_async.settings import Config

SCALE, FRAMES = 3, 3
PATCH = 24  # GT patch size in the patch layout
FRAME_W, FRAME_H = 48, 36  # frame size in the frame layout


# --- building datasets on disk ----------------------------------------------------------------


def texture(rng: np.random.Generator, height: int, width: int, noise: float = 0.3) -> np.ndarray:
    """uint8 HxWx3 with structure at several scales, so a misaligned crop cannot pass."""
    coarse = torch.from_numpy(rng.random((1, 3, height // 4 + 1, width // 4 + 1))).float()
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    fine = torch.from_numpy(rng.random((1, 3, height, width))).float()
    mixed = ((1 - noise) * smooth + noise * fine)[0].permute(1, 2, 0).numpy()
    return (mixed * 255).round().astype(np.uint8)


def make_patch_dataset(root: Path, n_train: int = 6, n_val: int = 2, seed: int = 0) -> Path:
    """Patch layout: GT PATCH², LR = FRAMES downscaled frames stacked vertically."""
    rng = np.random.default_rng(seed)
    for split, count, size in (("Patches", n_train, PATCH), ("Val", n_val, 2 * PATCH)):
        (root / split / "GT").mkdir(parents=True)
        (root / split / "LR").mkdir(parents=True)
        for i in range(count):
            frames = np.stack([texture(rng, size, size) for _ in range(FRAMES)])
            lr = bicubic_downscale(frames, SCALE)
            write_png(root / split / "GT" / f"p{i:03d}.png", frames[FRAMES // 2])
            write_png(root / split / "LR" / f"p{i:03d}.png", lr.reshape(-1, *lr.shape[2:]))
    return root


def make_frame_dataset(
    root: Path, clips: int = 2, frames: int = 5, with_lr: bool = True, noise: float = 0.3
) -> Path:
    """Frame layout: GT/<clip>/<frame>.png (and LR/ as bicubic_downscale of each frame)."""
    rng = np.random.default_rng(0)
    for prefix, count in (("", clips), ("Val/", 1)):
        for c in range(count):
            for f in range(frames):
                gt = texture(rng, FRAME_H, FRAME_W, noise)
                name = f"clip{c}/f{f}.png"
                (root / f"{prefix}GT" / f"clip{c}").mkdir(parents=True, exist_ok=True)
                write_png(root / f"{prefix}GT" / name, gt)
                if with_lr:
                    (root / f"{prefix}LR" / f"clip{c}").mkdir(parents=True, exist_ok=True)
                    write_png(root / f"{prefix}LR" / name, bicubic_downscale(gt, SCALE))
    return root


def truncate(path: Path) -> None:
    """Cut a PNG in half: its header still reads fine, its pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scan(root: Path, **kwargs):
    return scan_dataset(root, "auto", FRAMES, SCALE, kwargs.pop("gt_patch_size", 12), **kwargs)


def config(**changes) -> Config:
    return Config(**{"NUM_FRAMES": FRAMES, "SCALE": SCALE, "GT_PATCH_SIZE": 12, **changes})


# --- images -----------------------------------------------------------------------------------


def test_read_rgb_converts_every_mode_to_rgb8(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert (read_rgb(tmp_path / "gray.png") == gray[..., None]).all()
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert (read_rgb(tmp_path / "rgba.png") == rgba[..., :3]).all()
    palette = Image.fromarray(gray).convert("P")
    palette.save(tmp_path / "palette.png", transparency=0)
    assert read_rgb(tmp_path / "palette.png").shape == (5, 7, 3)
    wide = (gray.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "gray16.png")
    assert (read_rgb(tmp_path / "gray16.png") == gray[..., None]).all()
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    assert read_rgb(tmp_path / "rgb.jpg").dtype == np.uint8
    assert read_size(tmp_path / "rgb.jpg") == (7, 5)
    assert read_size(tmp_path / "gray16.png") == (7, 5)


def test_read_rgb_reduces_16_bit_colour(tmp_path):
    """PIL cannot write 48-bit PNGs, so this one is assembled chunk by chunk."""
    wide = np.random.default_rng(2).integers(0, 65536, (4, 5, 3)).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)  # filter type 0 per row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)  # 16 bits, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    (tmp_path / "rgb48.png").write_bytes(png + chunk(b"IEND", b""))
    rgb = read_rgb(tmp_path / "rgb48.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
    assert np.abs(rgb.astype(int) - wide.astype(int) / 257).max() <= 1


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\nxxxx"])
def test_garbage_is_a_dataset_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    for read in (read_rgb, read_size):
        with pytest.raises(DatasetError, match="unreadable image") as info:
            read(path)
        assert info.value.path == path


def test_tensor_round_trip_and_bicubic_downscale():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    t = to_tensor(img)
    assert t.shape == (3, 12, 9) and t.dtype == torch.float32 and 0 <= t.min() <= t.max() <= 1
    assert (to_uint8(t) == img).all()
    small = bicubic_downscale(img, 3)
    assert small.shape == (4, 3, 3) and small.dtype == np.uint8
    flat = np.full((12, 9, 3), 77, np.uint8)
    assert (bicubic_downscale(flat, 3) == 77).all()
    assert bicubic_downscale(np.stack([img, img]), 3).shape == (2, 4, 3, 3)


# --- patch layout -----------------------------------------------------------------------------


def test_patch_layout_scans_and_loads(tmp_path):
    root = make_patch_dataset(tmp_path / "ds")
    calls = []
    info = scan(root, progress=lambda done, total: calls.append((done, total)))
    assert (info.layout, info.train_count, info.val_count) == ("patches", 6, 2)
    assert info.train_gt_size == (PATCH, PATCH) and info.val_gt_sizes == ((2 * PATCH, 2 * PATCH),)
    assert info.val_names == ("p000", "p001")
    assert calls[-1] == (16, 16)
    train, val = build_datasets(config(), info)
    lr, gt, skipped = train[(3, 12345)]
    assert lr.shape == (FRAMES, 3, PATCH // SCALE, PATCH // SCALE) and gt.shape == (3, PATCH, PATCH)
    assert skipped == []
    name, lr, gt = val[1]
    assert name == "p001" and lr.shape == (FRAMES, 3, 16, 16) and gt.shape == (3, 48, 48)
    assert len(build_datasets(config(VAL_MAX_IMAGES=1), info)[1]) == 1


def _break_no_pairs(root: Path) -> Path:
    """A GT without LR is skipped (test_predecessor_datasets); with none left, it is an error."""
    for f in (root / "Patches/LR").iterdir():
        f.unlink()
    return root / "Patches/GT"


def _break_empty_training(root: Path) -> Path:
    for f in (root / "Patches/GT").iterdir():
        f.unlink()
    return root / "Patches/GT"


def _break_garbage(root: Path) -> Path:
    (root / "Patches/GT/p004.png").write_bytes(b"GIF? no, just garbage")
    return root / "Patches/GT/p004.png"


def _break_lr_size(root: Path) -> Path:
    write_png(root / "Patches/LR/p001.png", np.zeros((8 * (FRAMES + 1), 8, 3), np.uint8))
    return root / "Patches/LR/p001.png"


def _break_divisibility(root: Path) -> Path:
    write_png(root / "Patches/GT/p000.png", np.zeros((25, 25, 3), np.uint8))
    return root / "Patches/GT/p000.png"


def _break_mixed_sizes(root: Path) -> Path:
    write_png(root / "Patches/GT/p005.png", np.zeros((12, 12, 3), np.uint8))
    write_png(root / "Patches/LR/p005.png", np.zeros((4 * FRAMES, 4, 3), np.uint8))
    return root / "Patches/GT/p005.png"


def _break_missing_folder(root: Path) -> Path:
    shutil.rmtree(root / "Patches/LR")
    return root / "Patches/LR"


def _break_corrupt_val(root: Path) -> Path:
    truncate(root / "Val/LR/p000.png")
    return root / "Val/LR/p000.png"


@pytest.mark.parametrize(
    "break_it",
    [
        _break_no_pairs,
        _break_empty_training,
        _break_garbage,
        _break_lr_size,
        _break_divisibility,
        _break_mixed_sizes,
        _break_missing_folder,
        _break_corrupt_val,
    ],
)
def test_patch_layout_errors_name_the_bad_file(tmp_path, break_it):
    root = make_patch_dataset(tmp_path / "ds")
    bad = break_it(root)
    with pytest.raises(DatasetError) as info:
        scan(root)
    assert info.value.path == bad
    assert str(bad) in str(info.value)


def test_missing_or_unrecognised_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as info:
        scan(tmp_path / "nowhere")
    assert info.value.path == tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="is not a dataset"):
        detect_layout(tmp_path)
    (tmp_path / "Patches").mkdir()
    (tmp_path / "GT").mkdir()
    with pytest.raises(DatasetError, match="DATASET_LAYOUT"):
        detect_layout(tmp_path)


def test_truncated_training_file_is_skipped_and_reported(tmp_path, caplog):
    root = make_patch_dataset(tmp_path / "ds")
    info = scan(root)
    bad = root / "Patches/LR/p002.png"
    truncate(bad)  # after the scan: the header still reads, the pixels do not
    train, _ = build_datasets(config(), info)
    lr, gt, skipped = train[(2, 99)]
    assert skipped == [str(bad)]
    assert lr.shape == (FRAMES, 3, 8, 8) and gt.shape == (3, PATCH, PATCH)
    again = train[(2, 99)]  # deterministic replacement, known-bad file not decoded again
    assert again[2] == [str(bad)] and torch.equal(again[0], lr) and torch.equal(again[1], gt)

    caplog.set_level(logging.WARNING, logger="vsr_async.data.loader")
    loader = build_train_loader(train, 6, 0, False, seed=0)
    batches = list(itertools.islice(loader, 3))  # 18 samples: p002 is met at least twice
    reported = [p for b in batches for p in b.skipped]
    assert reported and set(reported) == {str(bad)}
    assert loader.skipped_counts[str(bad)] == len(reported)
    assert [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()] == [
        f"skipped unreadable training file {bad} (using another sample)"
    ]


def test_all_files_gone_is_an_error_not_an_endless_retry(tmp_path):
    root = make_patch_dataset(tmp_path / "ds")
    info = scan(root)
    for f in (root / "Patches/GT").iterdir():
        truncate(f)
    train = PatchTrainDataset(info.train_items, FRAMES, SCALE)
    with pytest.raises(DatasetError, match=f"{MAX_TRIES} training samples in a row"):
        train[(0, 1)]
    # from a worker process too, the user reads the DatasetError (not torch's RuntimeError)
    loader = build_train_loader(train, 2, 1, False, seed=0)
    with pytest.raises(DatasetError, match=f"{MAX_TRIES} training samples in a row") as raised:
        next(iter(loader))
    assert raised.value.path.parent == root / "Patches/GT"
    del loader


# --- frame layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("with_lr", [True, False])
def test_frame_layout_scans_and_loads(tmp_path, with_lr):
    root = make_frame_dataset(tmp_path / "ds", with_lr=with_lr)
    info = scan(root)
    assert info.layout == "frames" and info.lr_from_files == with_lr
    assert info.train_count == 2 * (5 - FRAMES + 1)
    assert info.gt_sizes == ((FRAME_W, FRAME_H),) and info.train_gt_size == (12, 12)
    assert info.val_names == ("clip0/f2",)
    train, val = build_datasets(config(), info)
    lr, gt, skipped = train[(5, 7)]
    assert lr.shape == (FRAMES, 3, 4, 4) and gt.shape == (3, 12, 12) and skipped == []
    name, lr, gt = val[0]
    assert name == "clip0/f2" and lr.shape == (FRAMES, 3, 12, 16) and gt.shape == (3, 36, 48)
    # the validation window is frames f1..f3 and GT its centre frame, full size
    expected_gt = read_rgb(root / "Val/GT/clip0/f2.png")
    assert torch.equal(gt, to_tensor(expected_gt))
    expected_lr = bicubic_downscale(read_rgb(root / "Val/GT/clip0/f1.png"), SCALE)
    assert torch.equal(lr[0], to_tensor(expected_lr))


def test_lr_made_on_the_fly_equals_lr_from_files(tmp_path):
    """The crop's LR, downscaled with context, is bit-identical to cropping the full LR frame."""
    # pure noise: any missing context changes some LR pixel by more than rounding hides
    root = make_frame_dataset(tmp_path / "ds", clips=1, frames=3, with_lr=True, noise=1.0)
    info = scan(root, gt_patch_size=12)
    from_files = FrameTrainDataset(info.train_items, FRAMES, SCALE, 12)
    without_lr = [Clip(c.name, c.gt_frames, None, c.gt_size) for c in info.train_items]
    on_the_fly = FrameTrainDataset(without_lr, FRAMES, SCALE, 12)
    for seed in range(12):
        a, b = from_files[(0, seed)], on_the_fly[(0, seed)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_frame_crops_are_aligned_with_their_lr(tmp_path):
    root = make_frame_dataset(tmp_path / "ds", with_lr=False)
    train, _ = build_datasets(config(GT_PATCH_SIZE=24), scan(root, gt_patch_size=24))
    for seed in range(8):
        lr, gt, _ = train[(seed % len(train), seed)]
        centre_lr = to_uint8(lr[FRAMES // 2]).astype(int)  # [8, 8, 3]
        expected = bicubic_downscale(to_uint8(gt), SCALE).astype(int)
        # the kernel reaches 2 LR pixels past the crop's edge; inside that, LR is the GT's
        # downscale (±1 from rounding: a rotation swaps the order of the two resampling passes)
        assert np.abs(centre_lr[2:-2, 2:-2] - expected[2:-2, 2:-2]).max() <= 1


def _frames_too_few(root: Path) -> Path:
    for f in ("f3.png", "f4.png", "f2.png"):
        (root / "GT/clip1" / f).unlink()
        (root / "LR/clip1" / f).unlink()
    return root / "GT/clip1"


def _frames_lr_clip_missing(root: Path) -> Path:
    shutil.rmtree(root / "LR/clip0")
    return root / "GT/clip0"


def _frames_lr_frame_missing(root: Path) -> Path:
    (root / "LR/clip1/f3.png").unlink()
    return root / "GT/clip1/f3.png"


def _frames_gt_frame_missing(root: Path) -> Path:
    (root / "GT/clip1/f3.png").unlink()
    return root / "LR/clip1/f3.png"


def _frames_lr_wrong_size(root: Path) -> Path:
    write_png(root / "LR/clip0/f1.png", np.zeros((13, 16, 3), np.uint8))
    return root / "LR/clip0/f1.png"


def _frames_odd_frame_size(root: Path) -> Path:
    write_png(root / "GT/clip1/f2.png", np.zeros((FRAME_H, FRAME_W - 3, 3), np.uint8))
    return root / "GT/clip1/f2.png"


def _frames_garbage(root: Path) -> Path:
    (root / "GT/clip0/f4.png").write_bytes(b"\x00" * 64)
    return root / "GT/clip0/f4.png"


def _frames_flat_gt(root: Path) -> Path:
    shutil.rmtree(root / "GT")
    (root / "GT").mkdir()
    write_png(root / "GT/f0.png", np.zeros((FRAME_H, FRAME_W, 3), np.uint8))
    return root / "GT"


def _frames_corrupt_val(root: Path) -> Path:
    truncate(root / "Val/LR/clip0/f3.png")
    return root / "Val/LR/clip0/f3.png"


def _frames_no_val(root: Path) -> Path:
    shutil.rmtree(root / "Val")
    return root / "Val/GT"


@pytest.mark.parametrize(
    "break_it",
    [
        _frames_too_few,
        _frames_lr_clip_missing,
        _frames_lr_frame_missing,
        _frames_gt_frame_missing,
        _frames_lr_wrong_size,
        _frames_odd_frame_size,
        _frames_garbage,
        _frames_flat_gt,
        _frames_corrupt_val,
        _frames_no_val,
    ],
)
def test_frame_layout_errors_name_the_bad_file(tmp_path, break_it):
    root = make_frame_dataset(tmp_path / "ds")
    bad = break_it(root)
    with pytest.raises(DatasetError) as info:
        scan(root)
    assert info.value.path == bad
    assert str(bad) in str(info.value)


def test_frame_layout_size_errors(tmp_path):
    root = make_frame_dataset(tmp_path / "ds", clips=1, with_lr=False)
    with pytest.raises(DatasetError, match="smaller than GT_PATCH_SIZE=48") as info:
        scan(root, gt_patch_size=48)
    assert info.value.path == root / "GT/clip0"
    write_png(root / "GT/clip0/f0.png", np.zeros((FRAME_H + 1, FRAME_W, 3), np.uint8))
    for f in range(1, 5):
        write_png(root / f"GT/clip0/f{f}.png", np.zeros((FRAME_H + 1, FRAME_W, 3), np.uint8))
    with pytest.raises(DatasetError, match="not divisible by SCALE=3") as info:
        scan(root)
    assert info.value.path == root / "GT/clip0/f0.png"


# --- augmentation -----------------------------------------------------------------------------


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of the square, on the last two dimensions."""
    x = x.flip(-1) if k & 4 else x
    return x.rot90(k & 3, dims=(-2, -1))


def test_augmentation_keeps_frames_and_gt_aligned():
    lr = torch.rand(FRAMES, 3, 8, 8)
    gt = lr[FRAMES // 2].repeat_interleave(SCALE, -1).repeat_interleave(SCALE, -2)  # exact GT
    seen = set()
    for seed in range(64):
        lr_aug, gt_aug = augment(lr, gt, np.random.default_rng(seed))
        (k,) = [k for k in range(8) if torch.equal(_dihedral(gt, k), gt_aug)]
        seen.add(k)
        assert torch.equal(lr_aug, _dihedral(lr, k))  # every frame moved the same way
        centre_up = lr_aug[FRAMES // 2].repeat_interleave(SCALE, -1).repeat_interleave(SCALE, -2)
        assert torch.equal(centre_up, gt_aug)
    assert seen == set(range(8))
    # non-square samples are flipped but never rotated, so they still batch together
    wide_lr, wide_gt = torch.rand(FRAMES, 3, 4, 8), torch.rand(3, 12, 24)
    for seed in range(16):
        a, b = augment(wide_lr, wide_gt, np.random.default_rng(seed))
        assert a.shape == wide_lr.shape and b.shape == wide_gt.shape
    same = [augment(lr, gt, np.random.default_rng(5)) for _ in range(2)]
    assert torch.equal(same[0][0], same[1][0])


# --- sampler and loader -----------------------------------------------------------------------


def test_sampler_resumes_exactly():
    n, seed = 7, 42
    full = list(itertools.islice(ResumableSampler(n, seed), 40))
    for epoch in range(5):
        assert sorted(i for i, _ in full[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert len({s for _, s in full}) == 40  # every sample gets its own seed
    for consumed in (0, 3, 7, 13, 22):
        epoch, index = position_after(n, consumed)
        resumed = list(itertools.islice(ResumableSampler(n, seed, epoch, index), 40 - consumed))
        assert resumed == full[consumed:]
    assert ResumableSampler(n, seed).epoch_length == n
    assert list(itertools.islice(ResumableSampler(n, seed + 1), 7)) != full[:7]


def test_loader_batches_resume_and_move(tmp_path):
    root = make_patch_dataset(tmp_path / "ds")
    train, _ = build_datasets(config(), scan(root))
    full = list(itertools.islice(build_train_loader(train, 4, 0, True, seed=3), 5))
    assert isinstance(full[0], TrainBatch)
    assert full[0].lr.shape == (4, FRAMES, 3, 8, 8) and full[0].gt.shape == (4, 3, PATCH, PATCH)
    epoch, index = position_after(len(train), 8)  # two batches consumed
    resumed = build_train_loader(train, 4, 0, True, seed=3, start_epoch=epoch, start_index=index)
    for a, b in zip(full[2:], itertools.islice(resumed, 3), strict=True):
        assert torch.equal(a.lr, b.lr) and torch.equal(a.gt, b.gt)
    moved = full[0].to("cpu", non_blocking=True)
    assert torch.equal(moved.lr, full[0].lr) and moved.skipped == []
    batch = collate_train([train[(0, 1)], train[(1, 2)]])
    assert batch.lr.shape[0] == 2 and batch.skipped == []


def test_frame_loader_same_batches_with_a_worker(tmp_path):
    root = make_frame_dataset(tmp_path / "ds", with_lr=False)
    train, _ = build_datasets(config(), scan(root))
    in_process = list(itertools.islice(build_train_loader(train, 2, 0, False, seed=9), 4))
    worker_loader = build_train_loader(train, 2, 1, False, seed=9)
    in_worker = list(itertools.islice(worker_loader, 4))
    for a, b in zip(in_process, in_worker, strict=True):
        assert torch.equal(a.lr, b.lr) and torch.equal(a.gt, b.gt)
    del worker_loader
