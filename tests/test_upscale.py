"""`python -m vsr_async upscale` on real videos made with PyAV from scikit-image's photographs:
same frame count, rate, timestamps and audio as the input, and frame for frame the model applied
to the sliding windows (exactly for FFV1 and PNG, within H.264's loss); bad inputs are one line,
a non-zero exit and no output; Ctrl+C leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from tools_helpers import (
    decode_video,
    pan_frames,
    psnr,
    reference_frames,
    write_frame_folder,
    write_tiny_checkpoint,
    write_video,
)

from vsr_async.__main__ import main
from vsr_async.data.images import read_rgb, to_tensor
from vsr_async.tools import progress, upscale, video_sink
from vsr_async.tools.pipeline import SlidingWindows
from vsr_async.tools.pixels import to_pixels
from vsr_async.tools.video_source import FrameInfo

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 13  # not a multiple of the batch: the last batch is short
BATCH = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A checkpoint (EMA ≠ training weights), an MP4 with audio, an MKV without, and a folder."""
    root = tmp_path_factory.mktemp("upscale_inputs")
    model, ema = write_tiny_checkpoint(root / "checkpoint_40.pt")
    frames = pan_frames(FRAMES, 48, 32)
    write_video(root / "pan_audio.mp4", frames, audio=True)
    write_video(root / "pan.mkv", frames[:7], rate=30)
    write_frame_folder(root / "frames", frames[:11])
    return {"root": root, "ckpt": root / "checkpoint_40.pt", "model": model, "ema": ema}


def upscale_cli(inputs: dict[str, Any], source: Path, output: Path, *extra: str) -> int:
    argv = ["upscale", "--checkpoint", str(inputs["ckpt"]), str(source), "-o", str(output)]
    return main([*argv, "--batch", str(BATCH), *extra])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsr_async: error: "), err
    return lines[0]


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sliding_windows_repeat_the_edges_and_keep_only_what_is_needed() -> None:
    sliding = SlidingWindows(5)
    windows = []
    for i in range(4):
        windows += sliding.push(FrameInfo(i, i), np.full((2, 2, 3), i, dtype=np.uint8))
        assert len(sliding._frames) <= 5
    windows += sliding.finish()
    got = [(info.index, [int(f[0, 0, 0]) for f in frames]) for info, frames in windows]
    assert got == [
        (0, [0, 0, 0, 1, 2]),
        (1, [0, 0, 1, 2, 3]),
        (2, [0, 1, 2, 3, 3]),
        (3, [1, 2, 3, 3, 3]),
    ]


def test_ffv1_output_is_the_model_on_sliding_windows_with_rate_timestamps_and_audio(
    inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = inputs["root"] / "pan_audio.mp4"
    output = tmp_path / "out.mkv"
    assert upscale_cli(inputs, source, output, "--codec", "ffv1") == 0
    assert "EMA weights of step 40" in capsys.readouterr().out

    before, after = decode_video(source), decode_video(output)
    assert len(after["frames"]) == len(before["frames"]) == FRAMES
    assert after["rate"] == before["rate"] == 25
    assert after["times"] == before["times"]
    assert after["audio"] == before["audio"] == [("aac", 44100)]
    assert after["packets"] == before["packets"] and len(before["packets"]) > 10

    expected = reference_frames(inputs["ema"], before["frames"], BATCH)
    assert after["frames"][0].shape == (64, 96, 3)
    for i, (got, want) in enumerate(zip(after["frames"], expected, strict=True)):
        assert np.array_equal(got, want), f"frame {i} differs from the model's output"
    training = reference_frames(inputs["model"], before["frames"], BATCH)
    assert not np.array_equal(after["frames"][0], training[0])  # EMA weights, not training ones
    assert entries(tmp_path) == ["out.mkv"]  # no temp file left


def test_h264_output_is_the_model_within_codec_loss(inputs: dict[str, Any], tmp_path: Path) -> None:
    """Within the codec's loss: as close to the model's frames as the same encoder (x264, CRF 12,
    yuv420p) run on those frames directly."""
    source = inputs["root"] / "pan_audio.mp4"
    output = tmp_path / "out.mp4"
    assert upscale_cli(inputs, source, output, "--crf", "12") == 0
    before, after = decode_video(source), decode_video(output)
    assert len(after["frames"]) == FRAMES and after["rate"] == 25
    assert after["times"] == before["times"]
    assert after["packets"] == before["packets"]
    expected = reference_frames(inputs["ema"], before["frames"], BATCH)
    write_video(tmp_path / "direct.mp4", expected, crf=12)
    direct = decode_video(tmp_path / "direct.mp4")["frames"]
    for i, (got, want, same_codec) in enumerate(
        zip(after["frames"], expected, direct, strict=True)
    ):
        assert psnr(got, same_codec) > 40, i  # near the same encoder run on the same frames
        assert abs(psnr(got, want) - psnr(same_codec, want)) < 0.5, i
        assert psnr(got, want) > 33, i
    # a frame off by one would show: the camera moves 2 px per frame
    assert psnr(after["frames"][5], expected[6]) < psnr(after["frames"][5], expected[5]) - 8


def test_frame_folders_in_and_out_are_exact_and_keep_the_names(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    folder = inputs["root"] / "frames"
    output = tmp_path / "sr_frames"
    assert upscale_cli(inputs, folder, output) == 0
    names = [f"frame_{i}.png" for i in range(1, 12)]
    assert sorted(entries(output)) == sorted(names)
    lr = [read_rgb(folder / n) for n in names]  # natural order: frame_2 before frame_10
    expected = reference_frames(inputs["ema"], lr, BATCH)
    for name, want in zip(names, expected, strict=True):
        assert np.array_equal(read_rgb(output / name), want), name
    assert entries(tmp_path) == ["sr_frames"]


def test_video_to_png_folder_keeps_every_frame_and_tiles_match(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    source = inputs["root"] / "pan.mkv"
    assert upscale_cli(inputs, source, tmp_path / "whole") == 0
    assert upscale_cli(inputs, source, tmp_path / "tiled", "--tiles", "2") == 0
    before = decode_video(source)
    assert before["rate"] == 30 and len(before["frames"]) == 7
    names = [f"{i:06d}.png" for i in range(7)]
    assert entries(tmp_path / "whole") == entries(tmp_path / "tiled") == names
    expected = reference_frames(inputs["ema"], before["frames"], BATCH)
    for name, want in zip(names, expected, strict=True):
        whole, tiled = read_rgb(tmp_path / "whole" / name), read_rgb(tmp_path / "tiled" / name)
        assert np.array_equal(whole, want), name
        # the tiles' overlap covers the receptive field: equal up to float rounding
        assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1, name


def test_existing_output_is_kept_unless_overwrite(
    inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = inputs["root"] / "pan.mkv"
    for output in (tmp_path / "out.mkv", tmp_path / "folder"):
        if output.suffix:
            output.write_bytes(b"precious")
        else:
            output.mkdir()
            (output / "precious.txt").write_text("x")
        assert upscale_cli(inputs, source, output, "--codec", "ffv1") == 1
        assert "exists (pass --overwrite to replace it)" in one_error_line(capsys)
        assert upscale_cli(inputs, source, output, "--codec", "ffv1", "--overwrite") == 0
        if output.suffix:
            assert len(decode_video(output)["frames"]) == 7
        else:
            assert entries(output) == [f"{i:06d}.png" for i in range(7)]
    assert entries(tmp_path) == ["folder", "out.mkv"]


def bad_case(name: str, root: Path, inputs: dict[str, Any]) -> tuple[list[str], Path, str]:
    """(arguments, the output that must not appear, what the one line must say)."""
    ckpt, video = str(inputs["ckpt"]), str(inputs["root"] / "pan_audio.mp4")
    out = root / "out" / "sr.mp4"
    if name == "text file as video":
        text = root / "notes.mp4"
        text.write_text("not a video\n")
        return [ckpt, str(text)], out, f"input {text}: not a video FFmpeg can read"
    if name == "truncated mp4":
        cut = root / "cut.mp4"
        write_video(cut, pan_frames(FRAMES, 48, 32), options={"movflags": "faststart"})
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
        return [ckpt, str(cut)], out, "truncated"  # "ends early" or "decoding fails", by the cut
    if name == "truncated mkv":
        cut = root / "cut.mkv"
        write_video(cut, pan_frames(40, 48, 32))
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
        return [ckpt, str(cut)], out, f"input {cut}: ends early: "
    if name == "empty folder":
        empty = root / "empty"
        empty.mkdir()
        return [ckpt, str(empty)], out, f"input {empty}: holds no image frames"
    if name == "checkpoint of another shape":
        other = root / "other.pt"
        write_tiny_checkpoint(other, weights_shape={**upscale_shape(), "N_FEATS": 16})
        return (
            [str(other), video],
            out,
            f"checkpoint {other}: weights do not fit the model shape it declares "
            "(MODEL=vsrnet N_FEATS=8 N_BLOCKS=2 NUM_FRAMES=3 SCALE=2): feat_extract.0.weight is "
            "[16, 3, 3, 3] in the file, [8, 3, 3, 3] in the model",
        )
    if name == "output in a missing folder":
        missing = root / "nowhere" / "sr.mp4"
        return [ckpt, video], missing, f"output {missing}: the folder {missing.parent} does not"
    if name == "unknown output suffix":
        return [ckpt, video], root / "out" / "sr.gif", "unknown output kind '.gif'"
    if name == "ffv1 in mp4":
        return [ckpt, video, "--codec", "ffv1"], out, "a FFV1 video goes in .mkv, not .mp4"
    raise AssertionError(name)


def upscale_shape() -> dict[str, int]:
    from tools_helpers import SHAPE

    return dict(SHAPE)


BAD_CASES = [
    "text file as video",
    "truncated mp4",
    "truncated mkv",
    "empty folder",
    "checkpoint of another shape",
    "output in a missing folder",
    "unknown output suffix",
    "ffv1 in mp4",
]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_inputs_are_one_line_and_leave_no_output(
    name: str, inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (ckpt, source, *extra), output, says = bad_case(name, tmp_path, inputs)
    code = main(["upscale", "--checkpoint", ckpt, source, "-o", str(output), *extra])
    line = one_error_line(capsys)
    assert code == 1
    assert says in line, line
    assert not output.exists()
    assert entries(tmp_path / "out") == []  # no temp file either


def test_missing_pyav_is_one_line_naming_the_install(
    inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets when it is absent
    code = upscale_cli(inputs, inputs["root"] / "pan.mkv", tmp_path / "out.mp4")
    line = one_error_line(capsys)
    assert code == 1
    assert "reading videos needs the 'av' package, which is not installed: pip install 'av" in line
    assert "[video] extra" in line
    assert entries(tmp_path) == []


def test_ctrl_c_leaves_no_output_and_no_temp_file(inputs: dict[str, Any], tmp_path: Path) -> None:
    """A real process, interrupted once its temp file exists (while it encodes)."""
    source = tmp_path / "long.mp4"
    write_video(source, pan_frames(120, 96, 64) * 3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    argv = [sys.executable, "-m", "vsr_async", "upscale", "--checkpoint", str(inputs["ckpt"])]
    process = subprocess.Popen(
        [*argv, str(source), "-o", str(out_dir / "sr.mp4"), "--batch", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in out_dir.iterdir()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.02)
    assert [p.name.startswith(".sr.mp4.") for p in out_dir.iterdir()] == [True]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vsr_async: interrupted"
    assert entries(out_dir) == []


def test_the_cli_lists_of_suffixes_and_codecs_match_the_sink() -> None:
    assert set(upscale.VIDEO_SUFFIXES) == set(video_sink.CONTAINERS)
    assert set(upscale.CODEC_NAMES) == set(video_sink.CODECS)


def test_frame_folder_to_video_takes_the_fps_option(
    inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, output = inputs["root"] / "frames", tmp_path / "from_frames.mkv"
    assert upscale_cli(inputs, folder, output, "--codec", "ffv1", "--fps", "30000/1001") == 0
    after = decode_video(output)
    assert after["rate"] == Fraction(30000, 1001) and after["audio"] == []
    wanted = [i * Fraction(1001, 30000) for i in range(11)]  # Matroska keeps milliseconds
    assert all(abs(t - w) <= Fraction(1, 1000) for t, w in zip(after["times"], wanted, strict=True))
    lr = [read_rgb(folder / f"frame_{i}.png") for i in range(1, 12)]
    expected = reference_frames(inputs["ema"], lr, BATCH)
    assert all(np.array_equal(g, w) for g, w in zip(after["frames"], expected, strict=True))

    capsys.readouterr()
    video = inputs["root"] / "pan.mkv"
    assert upscale_cli(inputs, video, tmp_path / "x.mkv", "--fps", "24") == 1
    assert "option --fps: is for a frame-folder input" in one_error_line(capsys)


def test_progress_lines_give_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    stream = io.StringIO()  # not a terminal: plain lines
    with progress.Progress("upscale", 10, stream=stream) as bar:
        for _ in range(4):
            time.sleep(0.01)
            bar.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"upscale: 4/10 frames, [\d.]+ frames/s, ETA 0:0\d", lines[-1]), lines


def test_terminal_shows_a_live_bar_with_frames_per_second(
    inputs: dict[str, Any], tmp_path: Path
) -> None:
    """On a terminal (a real pty) the bar shows frames/s; the run still ends cleanly."""
    pexpect = pytest.importorskip("pexpect")
    argv = ["-m", "vsr_async", "upscale", "--checkpoint", str(inputs["ckpt"])]
    argv += [str(inputs["root"] / "pan_audio.mp4"), "-o", str(tmp_path / "sr.mp4")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=120)
    child.expect(r"upscale.*13/13.*frames/s")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert len(decode_video(tmp_path / "sr.mp4")["frames"]) == FRAMES


def test_yuv_planes_made_on_the_device_match_ffmpeg_conversion() -> None:
    """pixels.py's BT.601 TV-range 4:2:0 against FFmpeg's own RGB -> yuv420p (swscale)."""
    photo = pan_frames(1, 96, 64)[0]
    (ours,) = to_pixels(to_tensor(photo)[None], "yuv420p")
    theirs = av.VideoFrame.from_ndarray(photo, format="rgb24").reformat(format="yuv420p")
    theirs_planes = theirs.to_ndarray()
    assert ours.shape == theirs_planes.shape == (96, 96)
    luma = np.abs(ours[:64].astype(int) - theirs_planes[:64].astype(int))
    chroma = np.abs(ours[64:].astype(int) - theirs_planes[64:].astype(int))
    assert luma.max() <= 1 and chroma.max() <= 4 and chroma.mean() < 0.5
    (rgb,) = to_pixels(to_tensor(photo)[None], "rgb24")
    assert np.array_equal(rgb, photo)  # 8-bit in, 8-bit out: exact
