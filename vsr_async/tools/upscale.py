"""`upscale`: apply a trained model to a video or a folder of frames.

    python -m vsr_async upscale --checkpoint CKPT INPUT -o OUTPUT

OUTPUT is a video (.mp4/.m4v/.mov/.mkv: the input's frame rate, timestamps and audio; H.264
yuv420p at --crf, or lossless FFV1 in .mkv) or, without a suffix, a folder of PNGs. Nothing is
written at OUTPUT until every frame is done (temp file + rename), so Ctrl+C or an error leaves
no half-written output. Top-level imports stay light: every CLI start imports this module.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError, OptionError, OutputError
from vsr_async.names import display_name

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # = video_sink.CONTAINERS (a test keeps it so)
CODEC_NAMES = ("h264", "ffv1")  # = video_sink.CODECS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "upscale",
        help="apply a trained model to a video or a folder of frames",
        description="Upscale a video (any format FFmpeg reads) or a folder of image frames with "
        "a checkpoint (.pt, its EMA weights when it has them) or exported weights "
        "(.safetensors). Output: a video with the input's frame rate, timestamps and audio, "
        "or a folder of PNGs.",
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="a video file or a frame folder")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTPUT",
        help=f"a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of PNGs (a path without suffix)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="CKPT",
        help="a checkpoint (.pt) or exported weights (.safetensors)",
    )
    p.add_argument(
        "--codec",
        choices=CODEC_NAMES,
        default="h264",
        help="h264: yuv420p at --crf (default); ffv1: lossless RGB (in .mkv)",
    )
    p.add_argument(
        "--crf",
        type=int,
        default=18,
        help="H.264 quality, 0 (lossless) to 51 (worst); 18 (default) looks like its source",
    )
    p.add_argument(
        "--fps",
        type=Fraction,
        metavar="RATE",
        help="frame rate of a frame-folder input, e.g. 25 or 30000/1001 (default 25)",
    )
    p.add_argument("--batch", type=int, default=4, help="windows per model call (default 4)")
    p.add_argument(
        "--tiles",
        type=int,
        default=1,
        metavar="N",
        help="start with NxN tiles per frame (default 1; doubled on out-of-memory anyway)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto: bf16 on compute capability >= 8.0, fp16 on 7.x, else fp32 (always on CPU)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    output = Path(args.output)
    to_folder = output.suffix == ""
    check_output_path(output, args.overwrite)

    from vsr_async.tools.load_model import load_model
    from vsr_async.tools.video_source import open_source

    source = open_source(args.input, args.fps)
    try:
        if args.fps is not None and source.kind == "video":
            raise OptionError("--fps", "is for a frame-folder input; a video keeps its own rate")
        loaded = load_model(args.checkpoint)
        size = (source.width * loaded.scale, source.height * loaded.scale)
        if not to_folder:
            from vsr_async.tools.video_sink import check_video_output

            check_video_output(output, args.codec, *size)
        plan = inference_plan(loaded, args)
        started = time.monotonic()
        frames = write_output(source, output, plan, args, size, to_folder)
        elapsed = time.monotonic() - started
    finally:
        source.close()
    print(
        f"wrote {display_name(str(output))}: {frames} frames, {source.width}x{source.height} -> "
        f"{size[0]}x{size[1]}, {frames / elapsed:.2f} frames/s ({loaded.describe()}; "
        f"{plan.precision.mode if plan.precision.mode != 'off' else 'fp32'} on {plan.device})"
    )
    return 0


def check_options(args: argparse.Namespace) -> None:
    for option, value in (
        ("INPUT", args.input),
        ("-o", args.output),
        ("--checkpoint", args.checkpoint),
    ):
        if "\x00" in str(value):
            raise OptionError(option, f"path contains a NUL byte: {str(value)!r}")
    if not 0 <= args.crf <= 51:
        raise OptionError("--crf", f"must be 0 (lossless) to 51, got {args.crf}")
    if args.batch < 1:
        raise OptionError("--batch", f"must be at least 1, got {args.batch}")
    if args.tiles < 1:
        raise OptionError("--tiles", f"must be at least 1, got {args.tiles}")
    if args.fps is not None and args.fps <= 0:
        raise OptionError("--fps", f"must be positive, got {args.fps}")


def check_output_path(output: Path, overwrite: bool) -> None:
    """Before any work: a known output kind, in a folder that exists, not replacing by accident."""
    suffix = output.suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise OutputError(
            output,
            f"unknown output kind {suffix!r}: a video ({', '.join(VIDEO_SUFFIXES)}) or a folder "
            "of PNGs (a path without suffix)",
        )
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(output, f"the folder {display_name(str(parent))} does not exist")
    if output.exists() and not overwrite:
        raise OutputError(output, "exists (pass --overwrite to replace it)")
    if output.is_dir() != (suffix == "") and output.exists():
        raise OutputError(output, "exists as a different kind (a file for a folder or back)")


def inference_plan(loaded: Any, args: argparse.Namespace) -> Any:
    """Device, precision and tiling for `loaded`'s model, from the options."""
    import torch

    from vsr_async.nn.tiling import TiledInference
    from vsr_async.tools.pipeline import InferencePlan
    from vsr_async.training.precision import precision_for, resolve_device

    try:
        device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as exc:
        raise OptionError("--device", str(exc).removeprefix("config key DEVICE: ")) from None
    requested = "off" if args.precision == "fp32" else args.precision
    try:
        precision = precision_for(requested, device)
    except ConfigError as exc:
        raise OptionError("--precision", str(exc).removeprefix("config key AMP: ")) from None
    model = loaded.model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return InferencePlan(
        model=model,
        device=device,
        precision=precision,
        batch=args.batch,
        num_frames=loaded.num_frames,
        scale=loaded.scale,
        tiling=TiledInference(tiles_per_side=args.tiles, purpose="upscale"),
    )


def write_output(
    source: Any,
    output: Path,
    plan: Any,
    args: argparse.Namespace,
    size: tuple[int, int],
    to_folder: bool,
) -> int:
    """Run the pipeline into a temp file or folder that becomes `output` only when complete."""
    from vsr_async.files.atomic import atomic_folder, atomic_path
    from vsr_async.tools.pipeline import run_pipeline
    from vsr_async.tools.progress import Progress
    from vsr_async.tools.video_sink import PngFolderSink, VideoSink

    with Progress("upscale", source.frame_count) as bar:
        if to_folder:
            with atomic_folder(output, replace=args.overwrite) as temp:
                return run_pipeline(source, PngFolderSink(temp, output), plan, bar.advance)
        with atomic_path(output) as temp:
            sink = VideoSink(
                temp,
                output,
                codec=args.codec,
                crf=args.crf,
                size=size,
                rate=source.rate,
                time_base=source.time_base,
                audio_from=source.path if source.has_audio else None,
            )
            try:
                frames = run_pipeline(source, sink, plan, bar.advance)
            except BaseException:
                sink.abort()
                raise
            sink.close()
            return frames
