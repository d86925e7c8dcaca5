"""`python -m vsr_async prepare VIDEO... --out DATASET [--layout patches|frames]`: turn videos
into a dataset this runtime trains on.

Each video is decoded twice with PyAV: first to check it and find its scene cuts (small luma
thumbnails; see `scene_cuts`), then to write the samples. Shots shorter than NUM_FRAMES are
dropped; whole shots go to validation (never frames of a training shot), and no window spans a
cut. LR frames are antialiased bicubic downscales, optionally blurred, noised and re-encoded
(JPEG or H.264). Sizes default to the config (`--config FILE`, else ./config.py when present,
else the defaults): SCALE, NUM_FRAMES, GT_PATCH_SIZE.

The dataset is built in DATASET/.prepare/ and moved into place only when complete; the state
file there records every finished clip, so running the same command again resumes where an
interrupted run stopped. A bad video or option is found before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError, ConfigErrors, OptionError
from vsr_async.names import display_name
from vsr_async.tools.output_paths import require_output_folder

STAGING = ".prepare"
STATE = "state.json"
MARKER = "prepare.json"
FORMAT = 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn videos into a dataset: scene cuts, GT crops, degraded LR, validation clips",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files or folders")
    p.add_argument("--out", type=Path, required=True, metavar="DATASET", help="dataset folder")
    p.add_argument("--layout", choices=("patches", "frames"), default="patches")
    p.add_argument("--config", type=Path, help="read SCALE, NUM_FRAMES, GT_PATCH_SIZE from here")
    p.add_argument("--scale", type=int, help="downscaling factor (default: SCALE)")
    p.add_argument("--num-frames", type=int, help="frames per window (default: NUM_FRAMES)")
    p.add_argument("--patch-size", type=int, help="GT crop side (default: GT_PATCH_SIZE)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of clips (0.1)")
    p.add_argument(
        "--val-size", type=int, default=0, help="patch layout: validation crop side (2x patch)"
    )
    p.add_argument("--stride", type=int, help="patch layout: frames between windows (NUM_FRAMES)")
    p.add_argument("--crops", type=int, default=4, help="patch layout: crops per window (4)")
    p.add_argument("--blur", type=float, default=0.0, metavar="SIGMA", help="Gaussian, HR px")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA", help="Gaussian, 0-255")
    p.add_argument("--jpeg", type=int, metavar="QUALITY", help="re-encode LR as JPEG (1-100)")
    p.add_argument("--h264", type=int, metavar="CRF", help="re-encode LR clips as H.264 (0-51)")
    p.add_argument("--cut-threshold", type=float, help="scene-cut threshold (default 30)")
    p.add_argument("--seed", type=int, default=0, help="crops, noise and validation choice")


def run(args: argparse.Namespace) -> int:
    from vsr_async.tools.prepare_plan import plan_clips
    from vsr_async.tools.prepare_video import VideoScan, expand_inputs, file_identity
    from vsr_async.tools.progress_bar import ToolProgress

    out = require_output_folder("--out", args.out)
    settings, sizes = settings_from(args)
    videos = expand_inputs(list(args.videos))
    identity = {
        "format": FORMAT,
        "settings": settings.to_dict(),
        "videos": [file_identity(v) for v in videos],
    }
    state = _existing_state(out, identity)
    if state is None:
        return 0  # complete already
    if state:  # the videos are the same files (identity), perhaps named from another folder
        scans = [
            replace(VideoScan.from_dict(d), path=v)
            for d, v in zip(state["scans"], videos, strict=True)
        ]
        _remove_temp_files(out / STAGING)
        clips, dropped = plan_clips(scans, settings)
    else:
        with ToolProgress("scanning videos", None, "frames") as bar:
            scans = _scan_all(videos, settings, bar)
            clips, dropped = plan_clips(scans, settings)  # an error here erases the bar too
    done = set(state.get("done", ()))
    print(f"sizes: {sizes}; LR: {_lr_steps(settings)}")
    _report_plan(scans, clips, dropped)
    if state:
        print(
            f"resuming the unfinished prepare in {display_name(out)}: {len(done)} of "
            f"{len(clips)} clips were written"
        )
    staging = out / STAGING
    staging.mkdir(parents=True, exist_ok=True)  # the first write of the whole command
    state = {
        **identity,
        "scans": [s.to_dict() for s in scans],
        "done": sorted(done),
        **({"counts": state["counts"]} if state and "counts" in state else {}),
    }
    _save_state(staging, state)
    counts = _write_all(staging, scans, clips, settings, state)
    _finish(out, staging, identity, scans, clips, counts)
    return 0


def settings_from(args: argparse.Namespace) -> tuple[Any, str]:
    """Settings from the options, sizes from the config, and where the sizes came from; every
    bad value is one line."""
    from vsr_async.settings import build_config, load_config_file, user_config_file
    from vsr_async.tools.degradations import Degradation
    from vsr_async.tools.prepare_plan import Settings
    from vsr_async.tools.scene_cuts import CUT_THRESHOLD

    source = args.config if args.config is not None else user_config_file()
    values = dict(load_config_file(source)) if source is not None else {}
    options = {"SCALE": "scale", "NUM_FRAMES": "num_frames", "GT_PATCH_SIZE": "patch_size"}
    given = {k: getattr(args, a) for k, a in options.items() if getattr(args, a) is not None}
    try:
        config = build_config({**values, **given})
    except ConfigErrors:
        raise
    except ConfigError as exc:  # one bad size: name the option the user typed, if it was one
        if exc.key not in given:
            raise
        option = "--" + options[exc.key].replace("_", "-")
        raise OptionError(option, str(exc).removeprefix(f"config key {exc.key}: ")) from None
    scale, frames, patch = config.SCALE, config.NUM_FRAMES, config.GT_PATCH_SIZE
    _require("--val-fraction", 0 < args.val_fraction < 1, "must be between 0 and 1")
    _require("--val-size", args.val_size >= 0, "must be >= 0")
    _require("--stride", args.stride is None or args.stride >= 1, "must be >= 1")
    _require("--crops", args.crops >= 1, "must be >= 1")
    _require("--blur", 0 <= args.blur <= 20, "must be between 0 and 20")
    _require("--noise", 0 <= args.noise <= 100, "must be between 0 and 100")
    _require("--jpeg", args.jpeg is None or 1 <= args.jpeg <= 100, "must be between 1 and 100")
    _require("--h264", args.h264 is None or 0 <= args.h264 <= 51, "must be between 0 and 51")
    threshold = CUT_THRESHOLD if args.cut_threshold is None else args.cut_threshold
    _require("--cut-threshold", threshold > 0, "must be > 0")
    degradation = Degradation(scale, args.blur, args.noise, args.jpeg, args.h264).to_dict()
    del degradation["scale"]
    origin = f"config file {display_name(source)}" if source is not None else "the defaults"
    sizes = f"SCALE={scale} NUM_FRAMES={frames} GT_PATCH_SIZE={patch} (from {origin}"
    sizes += " and options)" if given else ")"
    return Settings(
        layout=args.layout,
        scale=scale,
        num_frames=frames,
        patch_size=patch,
        val_size=args.val_size,
        val_fraction=args.val_fraction,
        stride=args.stride or frames,
        crops=args.crops,
        seed=args.seed,
        cut_threshold=threshold,
        degradation=degradation,
    ), sizes


def _require(option: str, ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(option, message)


def _existing_state(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """{} for a fresh start, the saved state to resume, None when the dataset is complete;
    an error when `out` holds something else."""
    shown = display_name(out)
    if not out.exists():
        return {}
    state_file = out / STAGING / STATE
    marker = out / MARKER
    if (out / STAGING).is_dir() and not state_file.exists():
        shutil.rmtree(out / STAGING)  # stopped before its first record: nothing to keep
    if state_file.is_file():
        state = _read_json(state_file)
        if _same(state, identity):
            return state
        raise OptionError(
            "--out",
            f"{shown} holds an unfinished prepare with other videos or settings; run the same "
            f"command again to finish it, or remove {display_name(out / STAGING)}",
        )
    if marker.is_file() and not (out / STAGING).exists():
        if _same(_read_json(marker), identity):
            print(f"{shown} already holds this dataset ({MARKER}); nothing to do")
            return None
        raise OptionError(
            "--out", f"{shown} holds a dataset prepared from other videos or settings"
        )
    if any(out.iterdir()):
        raise OptionError("--out", f"{shown} is not empty; name a new or an empty folder")
    return {}


def _remove_temp_files(staging: Path) -> None:
    """PNG temp files a killed run left (a clip not recorded as done is written again)."""
    from vsr_async.files.atomic import remove_stale_temps

    for folder, _, _ in os.walk(staging):
        remove_stale_temps(Path(folder))


def _same(saved: dict[str, Any], identity: dict[str, Any]) -> bool:
    return all(saved.get(k) == v for k, v in identity.items())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError("--out", f"cannot read {display_name(path)}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _save_state(staging: Path, state: dict[str, Any]) -> None:
    from vsr_async.files.atomic import write_atomic

    write_atomic(staging / STATE, (json.dumps(state, indent=1) + "\n").encode("utf-8"))


def _scan_all(videos: list[Path], settings: Any, bar: Any) -> list[Any]:
    """The first pass over every video (nothing is written: a bad video stops here)."""
    from vsr_async.tools.prepare_video import VideoError, scan_video

    scans: list[Any] = []
    for video in videos:
        base = sum(s.frames for s in scans)
        scan = scan_video(video, settings.cut_threshold, partial(_scanned, bar, base))
        s = settings.scale
        if min(scan.width - scan.width % s, scan.height - scan.height % s) < settings.patch_size:
            raise VideoError(
                video,
                f"frames are {scan.width}x{scan.height}, smaller than the GT patch size "
                f"{settings.patch_size}",
            )
        scans.append(scan)
    bar.update(total=sum(s.frames for s in scans))
    return scans


def _scanned(bar: Any, base: int, done: int) -> None:
    bar.update(completed=base + done)


def _lr_steps(settings: Any) -> str:
    from vsr_async.tools.degradations import Degradation

    return Degradation(scale=settings.scale, **settings.degradation).describe()


def _report_plan(scans: list[Any], clips: list[Any], dropped: list[Any]) -> None:
    for scan in scans:
        cuts = ", ".join(str(c) for c in scan.cuts) or "none"
        print(
            f"{display_name(scan.path)}: {scan.frames} frames {scan.width}x{scan.height}, "
            f"scene cuts before frames: {cuts}"
        )
    val = sum(c.split == "val" for c in clips)
    print(f"clips: {len(clips) - val} for training, {val} for validation", end="")
    print(f"; {len(dropped)} shot(s) shorter than a window dropped" if dropped else "")


def _write_all(
    staging: Path, scans: list[Any], clips: list[Any], settings: Any, state: dict[str, Any]
) -> dict[str, int]:
    from vsr_async.tools.prepare_plan import frames_used, iterate_clips
    from vsr_async.tools.prepare_video import read_frames
    from vsr_async.tools.prepare_write import PngFiles, write_clip
    from vsr_async.tools.progress_bar import ToolProgress

    done: set[str] = set(state["done"])
    counts = dict(state.get("counts", {}))
    # frames decoded: each video with clips to write, up to the end of its last such clip
    total = sum(
        max(
            (frames_used(c, settings)[1] for c in iterate_clips(clips, v) if c.id not in done),
            default=0,
        )
        for v in range(len(scans))
    )
    files = PngFiles()
    with ToolProgress("writing dataset", total, "frames") as bar:
        for v, scan in enumerate(scans):
            pending = [c for c in iterate_clips(clips, v) if c.id not in done]
            if not pending:
                continue
            frames = read_frames(scan.path)
            for clip in pending:
                counts[clip.id] = write_clip(staging, clip, frames, settings, files, bar.advance)
                files.sync()
                done.add(clip.id)
                state["done"], state["counts"] = sorted(done), counts
                _save_state(staging, state)
    return counts


def _finish(
    out: Path,
    staging: Path,
    identity: dict[str, Any],
    scans: list[Any],
    clips: list[Any],
    counts: dict[str, int],
) -> None:
    """Move the finished dataset into place, then write prepare.json and drop the staging."""
    from vsr_async.files.atomic import fsync_directory, write_atomic

    for name in sorted(os.listdir(staging)):
        if name != STATE and not name.startswith("."):
            os.replace(staging / name, out / name)
    fsync_directory(out)
    settings = identity["settings"]
    summary = {
        **identity,
        "scans": [s.to_dict() for s in scans],
        "clips": [{**c.to_dict(), "samples": counts.get(c.id, 0)} for c in clips],
    }
    write_atomic(out / MARKER, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    shutil.rmtree(staging)
    train = sum(counts.get(c.id, 0) for c in clips if c.split == "train")
    val = sum(counts.get(c.id, 0) for c in clips if c.split == "val")
    unit = "frames" if settings["layout"] == "frames" else "samples"
    print(
        f"wrote {display_name(out)} ({settings['layout']} layout): {train} training and {val} "
        f"validation {unit}; train with DATASET_ROOT = {json.dumps(str(out))}, "
        f'DATASET_LAYOUT = "{settings["layout"]}", SCALE = {settings["scale"]}, '
        f"NUM_FRAMES = {settings['num_frames']}, GT_PATCH_SIZE = {settings['patch_size']}"
    )
