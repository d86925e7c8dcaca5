"""The embedded demo dataset: built once, atomically, deterministically, and loadable end to end."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vsr_async.data import build_datasets, build_demo_dataset, build_train_loader, scan_dataset
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.demo import COMPLETE_MARKER, TRAIN_CLIPS, TRAIN_PHOTOS, VAL_PHOTOS
from vsr_async.data.images import read_rgb
from vsr_async.errors import DatasetError
from vsr_async.settings import Config

SCALE, FRAMES = 3, 5


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[tuple[int, int, str]]]:
    """The demo dataset, built once for this module, and the progress calls it made."""
    calls: list[tuple[int, int, str]] = []
    root = tmp_path_factory.mktemp("runs") / "vsr_demo"
    built = build_demo_dataset(root, SCALE, FRAMES, progress=lambda *a: calls.append(a))
    assert built == root
    return root, calls


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_demo_is_complete_small_and_reported(demo):
    root, calls = demo
    assert json.loads((root / COMPLETE_MARKER).read_text())["scale"] == SCALE
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folders
    total = TRAIN_CLIPS + len(VAL_PHOTOS)
    assert calls[0][:2] == (0, total) and calls[-1][:2] == (total, total)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    size_mb = sum(len(b) for b in _files(root).values()) / 1e6
    assert size_mb < 10
    # already built: returns at once, touching nothing
    marker_time = (root / COMPLETE_MARKER).stat().st_mtime_ns
    assert build_demo_dataset(root, SCALE, FRAMES) == root
    assert (root / COMPLETE_MARKER).stat().st_mtime_ns == marker_time


def test_demo_lr_is_the_bicubic_degradation_of_the_gt(demo):
    root, _ = demo
    motion = []
    for gt_path in sorted((root / "Patches/GT").iterdir())[:20]:
        gt = read_rgb(gt_path)
        lr = read_rgb(root / "Patches/LR" / gt_path.name).reshape(FRAMES, 32, 32, 3)
        assert gt.shape == (96, 96, 3)
        # GT is the centre frame: its LR is exactly its bicubic downscale (borders aside,
        # which were downscaled with the scene around them)
        assert np.array_equal(bicubic_downscale(gt, SCALE)[2:-2, 2:-2], lr[FRAMES // 2][2:-2, 2:-2])
        motion.append(np.abs(lr[0].astype(int) - lr[FRAMES // 2]).mean())
    assert np.median(motion) > 2  # the camera moves: the first frame differs from the centre


def test_demo_validation_uses_other_photographs(demo):
    root, _ = demo
    val_names = {p.stem for p in (root / "Val/GT").iterdir()}
    assert val_names == set(VAL_PHOTOS)
    train_photos = {p.stem.split("_", 1)[1] for p in (root / "Patches/GT").iterdir()}
    assert train_photos == set(TRAIN_PHOTOS) and not train_photos & val_names


def test_demo_loads_through_scan_datasets_and_loader(demo):
    root, _ = demo
    info = scan_dataset(root, "auto", FRAMES, SCALE, 96)
    assert (info.layout, info.train_count, info.val_count) == ("patches", TRAIN_CLIPS, 4)
    assert info.train_gt_size == (96, 96) and info.val_gt_sizes == ((192, 192),)
    train, val = build_datasets(Config(NUM_FRAMES=FRAMES, SCALE=SCALE), info)
    _, lr, gt = val[0]
    assert lr.shape == (FRAMES, 3, 64, 64) and gt.shape == (3, 192, 192)
    in_process = list(itertools.islice(build_train_loader(train, 8, 0, True, seed=7), 3))
    worker_loader = build_train_loader(train, 8, 1, True, seed=7)
    in_worker = list(itertools.islice(worker_loader, 3))
    for a, b in zip(in_process, in_worker, strict=True):
        assert a.lr.shape == (8, FRAMES, 3, 32, 32) and a.gt.shape == (8, 3, 96, 96)
        assert torch.equal(a.lr, b.lr) and torch.equal(a.gt, b.gt)
        assert a.skipped == b.skipped == []
    del worker_loader


def test_demo_rebuild_replaces_an_outdated_build_and_is_deterministic(demo, tmp_path):
    root, _ = demo
    other = tmp_path / "vsr_demo"
    other.mkdir()
    (other / "stale.png").write_bytes(b"old")
    (other / COMPLETE_MARKER).write_text(json.dumps({"scale": 4}))  # a demo with other params
    abandoned = tmp_path / ".vsr_demo.building-999999999"  # a build whose process died
    abandoned.mkdir()
    build_demo_dataset(other, SCALE, FRAMES)
    assert not (other / "stale.png").exists() and not abandoned.exists()
    assert _files(other) == _files(root)  # byte for byte: the build is deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vsr_demo"]


def test_demo_never_overwrites_other_data(tmp_path):
    target = tmp_path / "my_photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DatasetError, match="not a demo dataset") as info:
        build_demo_dataset(target, SCALE, FRAMES)
    assert info.value.path == target
    assert (target / "holiday.jpg").read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["my_photos"]
