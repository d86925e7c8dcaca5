"""The predecessor's datasets train as they are (issue 12): tiny copies in its generators' exact
formats — folder names, file names, LR frames stacked vertically — each scanned, trained a few
steps and validated; `check` names every file it skips and why.

Formats (PREDECESSOR.md §2): the old `make_dataset.py` writes `Patches/{GT,LR}` and
`Val/{GT,LR}`, named `<Patches|Val>_<video>_idx<i>.png`, GT first (an interrupted run leaves a GT
without its LR); `dataset_generator_v2` writes one folder per format (`Patches`,
`Patches_Medium169` `_med169`, `Patches_Large` `_large`), each `GT/` + `LR/` (frames 1-5 of 7) +
`LR_7frames/`, named `patch_<video>_idx<i><suffix>.png`, and creates `Val/GT`, `Val/LR` empty; an
earlier version wrote `LR_5frames/` instead of `LR/`. Sizes are scaled down (GT 540 → 24).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from helpers import TINY_SETTINGS, cli_config, read_json, run_cli

from vsr_async.data import build_datasets
from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import read_rgb, write_png
from vsr_async.errors import ConfigError, DatasetError
from vsr_async.files.statistics import list_statistics
from vsr_async.runtime.launch import build_run, scan, scan_async
from vsr_async.settings import Config, build_config

SCALE = 3
# (GT width, height) per format, scaled down from 540x540, 720x405 (16:9), 720x720
FORMATS = {"Patches": ("", (24, 24)), "Patches_Medium169": ("_med169", (48, 27))}
FORMATS["Patches_Large"] = ("_large", (30, 30))
PHOTOS = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())


def clean(video: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "_", video)


def cut(index: int, size: tuple[int, int], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A pan over a photograph: `frames` crops one pixel apart; GT = the centre crop, LR = each
    crop downscaled, stacked vertically (top = first frame), as the generators write them."""
    photo = PHOTOS[index % len(PHOTOS)]
    (w, h), centre = size, frames // 2
    rng = np.random.default_rng(index)
    y = int(rng.integers(0, photo.shape[0] - h))
    x = int(rng.integers(frames, photo.shape[1] - w - frames))
    crops = [photo[y : y + h, x + t - centre : x + t - centre + w] for t in range(frames)]
    lr = np.concatenate([bicubic_downscale(c, SCALE) for c in crops], axis=0)
    return crops[centre], lr


def old_generator(root: Path, train: int = 6, val: int = 2) -> Path:
    """make_dataset.py: Patches/ and Val/, 5-frame stacks, `<prefix>_<video>_idx<i>.png`."""
    for prefix, count, offset in (("Patches", train, 0), ("Val", val, 100)):
        for sub in ("GT", "LR"):
            (root / prefix / sub).mkdir(parents=True)
        for i in range(count):
            name = f"{prefix}_{clean('Star Trek S01E01.mkv')}_idx{i}.png"
            gt, lr = cut(offset + i, FORMATS["Patches"][1], 5)
            write_png(root / prefix / "GT" / name, gt)
            write_png(root / prefix / "LR" / name, lr)
    return root


def multi_generator(root: Path, count: int = 12, lr5: str = "LR") -> Path:
    """make_dataset_multi.py: a folder per format with GT/, `lr5` (frames 1-5 of 7) and
    LR_7frames/; Val/GT and Val/LR created but left empty."""
    for folder, (suffix, size) in FORMATS.items():
        for sub in ("GT", lr5, "LR_7frames"):
            (root / folder / sub).mkdir(parents=True)
        for i in range(count):
            name = f"patch_{clean('Der Hai (1975).mkv')}_idx{i}{suffix}.png"
            gt, lr7 = cut(i, size, 7)
            lr_h = size[1] // SCALE
            write_png(root / folder / "GT" / name, gt)
            write_png(root / folder / lr5 / name, lr7[lr_h : 6 * lr_h])
            write_png(root / folder / "LR_7frames" / name, lr7)
    for sub in ("GT", "LR"):
        (root / "Val" / sub).mkdir(parents=True)
    return root


def settings(dataset: Path, learn: Path, **overrides: Any) -> dict[str, Any]:
    """TINY_SETTINGS for the predecessor's 5 frames; validation at the last of 2 steps."""
    return {
        **TINY_SETTINGS,
        "NUM_FRAMES": 5,
        "MAX_STEPS": 2,
        "VAL_STEP_EVERY": 2,
        "LOG_TBOARD_EVERY": 1,
        "DATASET_ROOT": str(dataset),
        "DATA_ROOT": str(learn),
        **overrides,
    }


def config(dataset: Path, learn: Path, **overrides: Any) -> Config:
    return build_config(settings(dataset, learn, **overrides))


async def train(cfg: Config) -> tuple[dict[str, Any], str]:
    """A short real run to MAX_STEPS: its last Statistik file and its training.log."""
    run = build_run(cfg, await scan_async(cfg), console_log=False)
    assert await asyncio.wait_for(run.execute(), 180) == 0
    files = list_statistics(run.run_dir)
    assert [step for step, _ in files] == [cfg.MAX_STEPS]
    stats = read_json(files[-1][1])
    assert stats["step_current"] == cfg.MAX_STEPS and stats["total_loss_value"] > 0
    assert 0 < stats["quality_ki_value"] < 1
    return stats, (run.run_dir / "training.log").read_text(encoding="utf-8")


def warned(log: str, text: str) -> bool:
    """A WARNING line of training.log holds `text`."""
    return any(" WARNING " in line and text in line for line in log.splitlines())


def val_names(stats: dict[str, Any]) -> list[str]:
    return [image["name"] for image in stats["validation_images"]]


# --- a GT without its LR partner ---------------------------------------------------------------


async def test_unpaired_files_are_skipped_named_by_check_logged_and_counted(tmp_path) -> None:
    root = old_generator(tmp_path / "Learn_dataset")
    # an interrupted generator: the GT was written, its LR not (in training and in validation)
    lonely_train = root / "Patches/GT/Patches_Star_Trek_S01E01_mkv_idx6.png"
    lonely_val = root / "Val/GT/Val_Star_Trek_S01E01_mkv_idx2.png"
    for lonely, source in ((lonely_train, "Patches_"), (lonely_val, "Val_")):
        shutil.copy(next((lonely.parent).glob(f"{source}*")), lonely)

    file = cli_config(tmp_path / "run.toml", root, tmp_path / "out", NUM_FRAMES=5)
    checked = run_cli("check", "--config", str(file))
    assert checked.returncode == 0, checked.stderr
    assert "skipped: 2 file(s), not used for training or validation:" in checked.stdout
    assert (
        "    Patches/GT/Patches_Star_Trek_S01E01_mkv_idx6.png: no LR partner "
        "(Patches/LR/Patches_Star_Trek_S01E01_mkv_idx6.png does not exist)"
    ) in checked.stdout
    assert (
        "    Val/GT/Val_Star_Trek_S01E01_mkv_idx2.png: no LR partner "
        "(neither Val/LR/Val_Star_Trek_S01E01_mkv_idx2.png nor "
        "Patches/LR/Val_Star_Trek_S01E01_mkv_idx2.png exists)"
    ) in checked.stdout
    assert "training:   6 samples" in checked.stdout
    assert "validation: 2 images" in checked.stdout

    stats, log = await train(config(root, tmp_path / "out"))
    assert stats["corrupt_files_skipped"] == 2
    assert set(stats["corrupt_files"]) == {str(lonely_train), str(lonely_val)}
    assert val_names(stats) == ["Val_Star_Trek_S01E01_mkv_idx0", "Val_Star_Trek_S01E01_mkv_idx1"]
    assert warned(log, "dataset: skipped Patches/GT/Patches_Star_Trek_S01E01_mkv_idx6.png")
    assert warned(log, "dataset: skipped Val/GT/Val_Star_Trek_S01E01_mkv_idx2.png")


def test_nothing_left_after_skipping_is_an_error_naming_the_folder(tmp_path) -> None:
    root = old_generator(tmp_path / "ds")
    for lr in (root / "Patches/LR").iterdir():
        lr.unlink()
    with pytest.raises(DatasetError, match="none of its 6 GT patches has an LR partner") as e:
        scan(config(root, tmp_path / "out"))
    assert e.value.path == root / "Patches/GT"


# --- Val/LR missing ----------------------------------------------------------------------------


def moved_to_val(root: Path) -> Path:
    """The predecessor's habit: Val/GT filled by moving GT files out of Patches/GT (their LR
    stays in Patches/LR), plus one copied (so it is a training sample too); no Val/LR."""
    shutil.rmtree(root / "Val")
    (root / "Val/GT").mkdir(parents=True)
    names = sorted(p.name for p in (root / "Patches/GT").iterdir())
    for name in names[:2]:
        shutil.move(root / "Patches/GT" / name, root / "Val/GT" / name)
    shutil.copy(root / "Patches/GT" / names[2], root / "Val/GT" / names[2])
    return root


@pytest.mark.parametrize("choice", ["patches", "bicubic"])
async def test_missing_val_lr_uses_the_training_lr_or_bicubic(tmp_path, choice) -> None:
    root = moved_to_val(old_generator(tmp_path / "ds", train=8))
    cfg = config(root, tmp_path / "out", VAL_LR_MISSING=choice)
    info = scan(cfg)
    assert info.train_count == 6 and info.val_count == 3 and not info.skipped
    names = sorted(p.name for p in (root / "Val/GT").iterdir())
    (notice,) = info.notices
    _, val = build_datasets(cfg, info)
    for i, name in enumerate(names):
        _, lr, gt = val[i]
        if choice == "patches":
            expected = read_rgb(root / "Patches/LR" / name).reshape(5, 8, 8, 3)
        else:
            expected = np.repeat(
                bicubic_downscale(read_rgb(root / "Val/GT" / name), SCALE)[None], 5, 0
            )
        assert torch.equal(lr, torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255)
        assert torch.equal(
            gt, torch.from_numpy(read_rgb(root / "Val/GT" / name)).permute(2, 0, 1).float() / 255
        )
    if choice == "patches":
        assert notice.startswith(
            "3 validation image(s) have no Val/LR file and use the same name in Patches/LR "
            '(VAL_LR_MISSING="patches"); 1 of them are also training samples, '
            "so validation overlaps training"
        )
    else:
        assert notice.startswith(
            "3 validation image(s) have no Val/LR file: their LR is the bicubic"
        )

    stats, log = await train(cfg)
    assert sorted(val_names(stats)) == [Path(n).stem for n in names]
    assert warned(log, f"dataset: {notice}")


def test_missing_val_lr_can_skip_but_not_leave_nothing(tmp_path) -> None:
    root = moved_to_val(old_generator(tmp_path / "ds"))
    (root / "Val/LR").mkdir()
    first = sorted((root / "Val/GT").iterdir())[0]
    shutil.copy(root / "Patches/LR" / first.name, root / "Val/LR" / first.name)
    info = scan(config(root, tmp_path / "out", VAL_LR_MISSING="skip"))
    assert info.val_names == (first.stem,)
    assert [s.reason for s in info.skipped] == [
        f'no LR partner (Val/LR/{p.name} does not exist; VAL_LR_MISSING="skip")'
        for p in sorted((root / "Val/GT").iterdir())[1:]
    ]
    (root / "Val/LR" / first.name).unlink()
    with pytest.raises(DatasetError, match="none of its 3 validation images has an LR partner"):
        scan(config(root, tmp_path / "out", VAL_LR_MISSING="skip"))


# --- no validation images: a fixed hold-out ----------------------------------------------------


async def test_empty_val_holds_out_fixed_training_samples(tmp_path) -> None:
    root = multi_generator(tmp_path / "ds", count=20)
    cfg = config(root, tmp_path / "out")
    info = scan(cfg)
    held = info.val_names
    assert len(held) == 2  # a tenth of 20 (VAL_HOLDOUT_IMAGES=100 is more)
    trained = {pair.name for pair in info.train_items}
    assert info.train_count == 18 and not trained & set(held)
    assert info.notices == (
        "Val/GT has no images: validating on 2 training samples held out of Patches/GT "
        "(fixed by name, not trained on; VAL_HOLDOUT_IMAGES sets how many); "
        "put images in Val/GT to validate on your own",
    )
    # fixed: the same without Val/ at all, with another VAL_HOLDOUT_IMAGES bound, after a copy
    shutil.rmtree(root / "Val")
    assert scan(cfg).val_names == held
    assert scan(config(root, tmp_path / "out", VAL_HOLDOUT_IMAGES=1)).val_names[0] in held
    copy = shutil.copytree(root, tmp_path / "copy")
    assert scan(config(copy, tmp_path / "out")).val_names == held

    stats, log = await train(cfg)
    assert val_names(stats) == list(held)
    assert warned(log, "dataset: Val/GT has no images: validating on 2 training samples")


def test_a_single_training_sample_is_not_held_out(tmp_path) -> None:
    root = old_generator(tmp_path / "ds", train=1, val=0)
    with pytest.raises(DatasetError, match="only 1 training sample"):
        scan(config(root, tmp_path / "out"))


# --- the generator's other patch folders and LR_<n>frames folders -----------------------------


async def test_other_patch_folder_with_seven_frames_trains(tmp_path) -> None:
    root = multi_generator(tmp_path / "ds")
    cfg = config(root, tmp_path / "out", PATCH_FOLDER="Patches_Medium169", NUM_FRAMES=7)
    info = scan(cfg)
    assert info.train_gt_size == (48, 27) and info.train_lr_size == (16, 9)
    assert {p.lr.parent for p in info.train_items} == {root / "Patches_Medium169/LR_7frames"}
    train_set, _ = build_datasets(cfg, info)
    lr, gt, _ = train_set[(0, 0)]
    assert lr.shape[:2] == (7, 3) and gt.shape[0] == 3
    stats, _ = await train(cfg)
    assert all(name.endswith("_med169") for name in val_names(stats))


def test_lr_folder_choice(tmp_path) -> None:
    root = multi_generator(tmp_path / "ds")
    out = tmp_path / "out"
    large = scan(config(root, out, PATCH_FOLDER="Patches_Large"))  # 5 frames: LR/
    assert large.train_gt_size == (30, 30)
    assert {p.lr.parent.name for p in large.train_items} == {"LR"}
    explicit = scan(config(root, out, LR_FOLDER="LR_7frames", NUM_FRAMES=7))
    assert {p.lr.parent.name for p in explicit.train_items} == {"LR_7frames"}
    with pytest.raises(DatasetError, match="holds 7-frame LR stacks, but NUM_FRAMES=5"):
        scan(config(root, out, LR_FOLDER="LR_7frames"))
    with pytest.raises(DatasetError, match=r"LR_FOLDER='LR_9frames'.*LR folders here: LR, LR_7"):
        scan(config(root, out, LR_FOLDER="LR_9frames"))
    with pytest.raises(ConfigError, match="config key PATCH_FOLDER: must be one folder name"):
        scan(config(root, out, PATCH_FOLDER="../Patches"))

    early = multi_generator(tmp_path / "early", lr5="LR_5frames")  # no LR/: LR_5frames
    info = scan(config(early, out))
    assert {p.lr.parent.name for p in info.train_items} == {"LR_5frames"}
    with pytest.raises(DatasetError, match="LR folders here: LR_5frames, LR_7frames"):
        scan(config(early, out, NUM_FRAMES=3))


def test_missing_patch_folder_lists_the_ones_there(tmp_path) -> None:
    root = multi_generator(tmp_path / "ds")
    shutil.rmtree(root / "Patches")  # still recognised as the patch layout (DATASET_LAYOUT auto)
    file = cli_config(
        tmp_path / "run.toml", root, tmp_path / "out", DATASET_LAYOUT="auto", NUM_FRAMES=5
    )
    checked = run_cli("check", "--config", str(file))
    assert checked.returncode == 1
    assert checked.stderr.strip().endswith(
        "missing (PATCH_FOLDER='Patches'); patch folders here: Patches_Large, "
        "Patches_Medium169 (each with GT/ and LR/ or LR_<n>frames/)"
    )
    assert str(root / "Patches") in checked.stderr
