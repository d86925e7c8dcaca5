"""`upscale` throughput: the whole tool (decode, windows, model, encode, audio copy, temp file and
rename) against the bare model forward on the same frames, in the same process.

Input: a video made here with PyAV, the camera panning over scikit-image's photographs, with an
AAC track; the demo model's shape (N_FEATS 32, N_BLOCKS 4, NUM_FRAMES 5, x3) at random weights
(speed does not depend on what the weights learned). Bare: every window prepared beforehand as
one float tensor, then `model(batch)` back to back under no_grad, nothing else. Tool: the real
`python -m vsr_async upscale` entry point (`main([...])`, in-process) writing H.264 (default) or
FFV1. Trials alternate ABBA...; the ratio is the median of the per-pair ratios (budget: >= 0.9).

    python bench/upscale.py --quick            # ~1 minute on a 2-core CPU
    python bench/upscale.py --frames 240 --size 320x180 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, machine, median, print_result, print_table

from vsr_async.__main__ import DEMO_SETTINGS, main
from vsr_async.data.images import to_tensor
from vsr_async.files.checkpoints import FORMAT_VERSION, write_checkpoint
from vsr_async.nn.model import VSRNet
from vsr_async.settings import build_config

SHAPE = {k: DEMO_SETTINGS[k] for k in ("N_FEATS", "N_BLOCKS", "NUM_FRAMES", "SCALE")}


def write_inputs(folder: Path, frames: int, width: int, height: int) -> tuple[Path, Path]:
    """A checkpoint of the demo shape and a panning H.264 + AAC video; returns their paths."""
    import av
    from skimage import data as photos

    torch.manual_seed(0)
    model = VSRNet(SHAPE["N_FEATS"], SHAPE["N_BLOCKS"], SHAPE["NUM_FRAMES"], SHAPE["SCALE"])
    ckpt = folder / "bench.pt"
    write_checkpoint(
        ckpt,
        {
            "format_version": FORMAT_VERSION,
            "step": 0,
            "model": model.state_dict(),
            "ema": None,
            "optimizer": {"state": {}, "param_groups": []},
            "config": build_config(dict(SHAPE)).public_dict(),
            "run_id": "bench",
        },
    )
    image = photos.astronaut()
    video = folder / "pan.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=44100)
        sound.layout = "mono"
        for t in range(frames):
            x, y = (2 * t) % (image.shape[1] - width), t % (image.shape[0] - height)
            crop = np.ascontiguousarray(image[y : y + height, x : x + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        container.mux(stream.encode(None))
        samples = 44100 * frames // 25
        tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 44100)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[None, start : start + 1024]), format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = 44100, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
    return ckpt, video


def bare_windows(video: Path, batch: int) -> list[torch.Tensor]:
    """Every frame's window (edges repeated), decoded beforehand, in the tool's batches."""
    import av

    with av.open(str(video)) as container:
        frames = [to_tensor(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    radius, last = SHAPE["NUM_FRAMES"] // 2, len(frames) - 1
    windows = [
        torch.stack([frames[min(max(i + d, 0), last)] for d in range(-radius, radius + 1)])
        for i in range(len(frames))
    ]
    return [torch.stack(windows[s : s + batch]) for s in range(0, len(windows), batch)]


@torch.no_grad()
def bare_rate(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> float:
    """Frames/s of the model alone (inputs already on the device)."""
    inputs = [b.to(device) for b in batches]
    started = time.perf_counter()
    for lr in inputs:
        model(lr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def tool_rate(
    ckpt: Path, video: Path, output: Path, frames: int, args: argparse.Namespace
) -> float:
    argv = ["upscale", "--checkpoint", str(ckpt), str(video), "-o", str(output), "--overwrite"]
    argv += ["--batch", str(args.batch), "--device", args.device, "--codec", args.codec]
    started = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit("upscale failed")
    return frames / (time.perf_counter() - started)


def measure(args: argparse.Namespace) -> dict[str, object]:
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="vsr-bench-upscale-"))
    ckpt, video = write_inputs(folder, args.frames, width, height)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu")
    if args.device not in ("auto",):
        device = torch.device(args.device)
    from vsr_async.tools.load_model import load_model

    model = load_model(ckpt).model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    batches = bare_windows(video, args.batch)
    output = folder / ("sr.mkv" if args.codec == "ffv1" else "sr.mp4")
    bare_rate(model, batches, device)  # warm-up (allocator, kernels, page cache)
    tool_rate(ckpt, video, output, args.frames, args)

    rows, ratios = [], []
    for trial in range(args.trials):
        if trial % 2 == 0:  # ABBA...: a slow drift of the shared machine hits both alike
            bare = bare_rate(model, batches, device)
            tool = tool_rate(ckpt, video, output, args.frames, args)
        else:
            tool = tool_rate(ckpt, video, output, args.frames, args)
            bare = bare_rate(model, batches, device)
        ratios.append(tool / bare)
        rows.append([trial + 1, bare, tool, tool / bare])
    print_table(
        f"upscale vs bare forward: {args.frames} frames {width}x{height} -> "
        f"{width * SHAPE['SCALE']}x{height * SHAPE['SCALE']}, batch {args.batch}, "
        f"{args.codec}, {device}",
        ["trial", "bare frames/s", "upscale frames/s", "ratio"],
        rows,
    )
    result = {
        "bench": "upscale",
        "frames": args.frames,
        "size": args.size,
        "codec": args.codec,
        "batch": args.batch,
        "device": str(device),
        "bare_fps_median": median([r[1] for r in rows]),
        "upscale_fps_median": median([r[2] for r in rows]),
        "ratio_median": statistics.median(ratios),
        "ratios": [round(r, 4) for r in ratios],
        "machine": machine(),
    }
    print(f"\nratio (median of {args.trials} pairs): {result['ratio_median']:.3f} (budget >= 0.9)")
    return result


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="96 frames, 3 trials")
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", default="160x96", help="LR frame size WxH (even numbers)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--codec", choices=("h264", "ffv1"), default="h264")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.trials = 96, 3
    print_result(measure(args))


if __name__ == "__main__":
    assert REPO.is_dir()
    main_cli()
