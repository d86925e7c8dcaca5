"""`python -m vsr_async prepare`: real videos made with PyAV from scikit-image photographs
(moving crops; two shots joined by a hard cut) become a dataset that `check` accepts and a run
trains on; no sample spans the cut, validation takes whole clips, an interrupted prepare resumes
to the very files an uninterrupted one writes, and bad inputs are one line with nothing left."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import REPO, TINY_SETTINGS, read_json, write_toml
from skimage import data

from vsr_async.__main__ import main
from vsr_async.data.images import read_rgb
from vsr_async.runtime.launch import build_run, scan_async
from vsr_async.settings import build_config
from vsr_async.tools import prepare_write

SIZES = ["--scale", "2", "--num-frames", "3", "--patch-size", "24"]
CUT_AT = 14  # frames of the first shot of cut.mp4


def pan(photo: np.ndarray, count: int, x0: int, y0: int) -> list[np.ndarray]:
    """A camera pan over a photograph: 96x72 frames moving 2 px right and 1 px down a frame."""
    return [np.ascontiguousarray(photo[y0 + t : y0 + t + 72, x0 + 2 * t : x0 + 2 * t + 96])
            for t in range(count)]  # fmt: skip


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cut.mp4: a pan over the astronaut, then a hard cut to a pan over the coffee cup;
    cat.mp4: one shot of a pan over the cat."""
    folder = tmp_path_factory.mktemp("videos")
    first = pan(data.astronaut(), CUT_AT, 100, 60)
    write_video(folder / "cut.mp4", first + pan(data.coffee(), 12, 150, 100))
    write_video(folder / "cat.mp4", pan(data.chelsea(), 10, 60, 40))
    return folder


def prepare(*args: str) -> int:
    return main(["prepare", *args])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsr_async", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_the_cut_is_found_and_no_sample_spans_it(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = run_cli("prepare", str(videos / "cut.mp4"), str(videos / "cat.mp4"),
                     "--out", str(out), "--crops", "2", *SIZES)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"scene cuts before frames: {CUT_AT}" in result.stdout
    summary = read_json(out / "prepare.json")
    assert [s["cuts"] for s in summary["scans"]] == [[CUT_AT], []]
    assert not (out / ".prepare").exists()

    shots = {"cut_s000": (0, CUT_AT), "cut_s001": (CUT_AT, 26), "cat_s000": (0, 10)}
    clips = {c["id"]: c for c in summary["clips"]}
    assert {k: (c["start"], c["end"]) for k, c in clips.items()} == shots
    val = [k for k, c in clips.items() if c["split"] == "val"]
    assert len(val) == 1  # 10 % of 3 clips, at least one
    name = re.compile(r"^(?P<clip>\w+_s\d{3})_(?P<first>\d{6})(_\d{2})?\.png$")
    for split, folder in (("train", out / "Patches"), ("val", out / "Val")):
        gts = sorted((folder / "GT").iterdir())
        assert gts and [p.name for p in gts] == sorted(p.name for p in (folder / "LR").iterdir())
        for gt in gts:
            match = name.match(gt.name)
            assert match, gt.name
            start, end = shots[match["clip"]]
            first = int(match["first"])
            assert start <= first and first + 3 <= end, f"{gt.name} spans a cut"
            assert clips[match["clip"]]["split"] == split  # whole clips, never frames
            # the content agrees: the 3 LR frames are one scene moving by a pixel
            lr = read_rgb(folder / "LR" / gt.name).astype(np.float32).reshape(3, 12, -1, 3)
            assert np.abs(lr[0] - lr[1]).mean() < 20 and np.abs(lr[1] - lr[2]).mean() < 20
    assert len(list((out / "Patches" / "GT").iterdir())) == sum(
        c["samples"] for c in clips.values() if c["split"] == "train"
    )


def test_the_frame_difference_test_flags_the_cut_only(videos: Path) -> None:
    """Pans differ by a few grey levels from frame to frame, the cut by far more than 30."""
    from vsr_async.tools.scene_cuts import CUT_THRESHOLD, THUMB_WIDTH, CutDetector

    detector, scores, flagged = CutDetector(), [], []
    with av.open(str(videos / "cut.mp4")) as container:
        previous = None
        for index, frame in enumerate(container.decode(video=0)):
            thumb = frame.reformat(
                width=THUMB_WIDTH, height=48, format="gray", interpolation="AREA"
            ).to_ndarray()
            if previous is not None:
                scores.append(float(np.abs(thumb.astype(np.float32) - previous).mean()))
            previous = thumb.astype(np.float32)
            if detector.push(thumb):
                flagged.append(index)
    assert flagged == [CUT_AT]
    cut = scores.pop(CUT_AT - 1)
    assert cut > 1.5 * CUT_THRESHOLD and max(scores) < CUT_THRESHOLD / 2, (cut, max(scores))


async def train_a_few_steps(dataset: Path, layout: str, root: Path) -> dict[str, object]:
    config = build_config(
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(dataset),
            "DATA_ROOT": str(root / "Learn"),
            "DATASET_LAYOUT": layout,
            "SCALE": 2,
            "NUM_FRAMES": 3,
            "GT_PATCH_SIZE": 24,
            "MAX_STEPS": 4,
            "VAL_STEP_EVERY": 4,
        }
    )
    run = build_run(config, await scan_async(config), console_log=False)
    assert await asyncio.wait_for(await run.start(), 120) == 0
    return read_json(run.run_dir / "Statistik_4.json")


@pytest.mark.parametrize(
    ("layout", "degradations"),
    [
        ("patches", []),
        ("frames", ["--blur", "0.8", "--noise", "2", "--jpeg", "85", "--h264", "28"]),
    ],
)
async def test_the_dataset_passes_check_and_trains(
    videos: Path, tmp_path: Path, layout: str, degradations: list[str]
) -> None:
    out = tmp_path / "dataset"
    args = [str(videos), "--out", str(out), "--layout", layout, *SIZES, *degradations]
    assert await asyncio.to_thread(prepare, *args) == 0
    config = write_toml(
        tmp_path / "run.toml",
        {
            "DATASET_ROOT": str(out),
            "DATASET_LAYOUT": layout,
            "SCALE": 2,
            "NUM_FRAMES": 3,
            "GT_PATCH_SIZE": 24,
        },
    )
    check = await asyncio.to_thread(run_cli, "check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert f"({layout} layout, LR files)" in check.stdout
    stats = await train_a_few_steps(out, layout, tmp_path)
    assert stats["step_current"] == 4 and stats["psnr_y_ki_db"] is not None
    if layout == "frames":  # LR = degraded, not the plain bicubic downscale
        from vsr_async.data.degrade import bicubic_downscale

        gt_dir = out / "GT" / "cut_s000"
        gt = read_rgb(gt_dir / "000005.png")
        lr = read_rgb(out / "LR" / "cut_s000" / "000005.png").astype(np.float32)
        difference = np.abs(lr - bicubic_downscale(gt, 2).astype(np.float32)).mean()
        assert 1.0 < difference < 20.0


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_an_interrupted_prepare_resumes_to_the_same_files(
    videos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(videos / "cut.mp4"), str(videos / "cat.mp4"), *SIZES, "--noise", "3"]
    assert prepare(*args, "--out", str(tmp_path / "whole")) == 0
    whole = tree(tmp_path / "whole")

    first_clip = read_json(tmp_path / "whole" / "prepare.json")["clips"][0]
    assert first_clip["id"] == "cut_s000"
    stop_at = 2 * first_clip["samples"] + 2  # GT and LR per sample; the next clip's 1st LR
    real_write = prepare_write.PngFiles.write
    calls = 0

    def interrupted_write(self: prepare_write.PngFiles, path: Path, image: np.ndarray) -> None:
        nonlocal calls
        calls += 1
        if calls == stop_at:  # fault injection: Ctrl+C in the middle of the second clip
            raise KeyboardInterrupt
        real_write(self, path, image)

    monkeypatch.setattr(prepare_write.PngFiles, "write", interrupted_write)
    out = tmp_path / "resumed"
    assert prepare(*args, "--out", str(out)) == 130
    state = read_json(out / ".prepare" / "state.json")
    assert state["done"] == ["cut_s000"]  # the first clip recorded, the second not
    assert not (out / "Patches").exists() and not (out / "prepare.json").exists()
    check = run_cli("check", "--set", f"DATASET_ROOT={out}", "--set", "SCALE=2",
                    "--set", "NUM_FRAMES=3", "--set", "GT_PATCH_SIZE=24")  # fmt: skip
    assert check.returncode == 1  # an unfinished dataset never looks complete

    monkeypatch.undo()
    capsys.readouterr()
    assert prepare(*args, "--out", str(out)) == 0
    assert "1 of 3 clips were written" in capsys.readouterr().out
    assert tree(out) == whole
    assert prepare(*args, "--out", str(out)) == 0  # once complete, again is nothing to do
    assert "nothing to do" in capsys.readouterr().out


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsr_async: error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_and_leave_nothing(
    videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    whole = (videos / "cut.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = tmp_path / "empty"
    empty.mkdir()
    one_shot = tmp_path / "one_shot"
    one_shot.mkdir()
    write_video(one_shot / "cat.mp4", pan(data.chelsea(), 10, 60, 40))
    out = tmp_path / "out"
    cases = [
        ([str(text), "--out", str(out)], "notes.mp4"),
        ([str(truncated), "--out", str(out)], "truncated.mp4"),
        ([str(empty), "--out", str(out)], "empty"),
        ([str(one_shot), "--out", str(out)], "at least 2"),
        ([str(videos), "--out", str(tmp_path / "missing" / "out")], "missing"),
        ([str(videos), "--out", str(out), "--jpeg", "0"], "--jpeg"),
        ([str(videos), "--out", str(out), "--patch-size", "25"], "--patch-size"),
        ([str(videos), "--out", str(out), "--patch-size", "96", "--scale", "4"], "smaller"),
    ]
    for args, named in cases:
        assert prepare(*SIZES, *args) == 1, args  # the case's own options come last and win
        assert named in one_error_line(capsys), args
        assert not out.exists() and not (tmp_path / "missing").exists(), args
    not_ours = tmp_path / "not_ours"
    not_ours.mkdir()
    (not_ours / "keep.txt").write_text("mine")
    assert prepare(str(videos), "--out", str(not_ours), *SIZES) == 1
    assert "not empty" in one_error_line(capsys)
    assert [p.name for p in not_ours.iterdir()] == ["keep.txt"]


def test_without_pyav_it_says_which_pip_install_adds_it(
    videos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets when it is not installed
    assert prepare(str(videos), "--out", str(tmp_path / "out"), *SIZES) == 1
    assert "pip install 'vsr_async[video]'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
