"""Real inputs for the tools' tests: videos made with PyAV from scikit-image's photographs (a
camera panning over the picture, optionally with a sine-tone AAC track), frame folders, and
tiny checkpoints written by the project's own checkpoint writer.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from skimage import data as photos

from vsr_async.data.images import to_tensor, to_uint8, write_png
from vsr_async.files.checkpoints import FORMAT_VERSION, write_checkpoint
from vsr_async.nn.model import VSRNet
from vsr_async.settings import build_config

SHAPE = {"N_FEATS": 8, "N_BLOCKS": 2, "NUM_FRAMES": 3, "SCALE": 2}
SAMPLE_RATE = 44100


def tiny_model(seed: int, shape: dict[str, int] = SHAPE) -> VSRNet:
    """A small VSRNet whose output is far from bicubic (its output conv is scaled up), so a test
    can tell the model's frames from a plain resize and one set of weights from another."""
    torch.manual_seed(seed)
    model = VSRNet(shape["N_FEATS"], shape["N_BLOCKS"], shape["NUM_FRAMES"], shape["SCALE"])
    with torch.no_grad():
        model.upsample[0].weight.mul_(100.0)
    return model.eval()


def write_tiny_checkpoint(
    path: Path, *, ema: bool = True, weights_shape: dict[str, int] | None = None
) -> tuple[VSRNet, VSRNet | None]:
    """A checkpoint as training writes it (`write_checkpoint`, the run's public config with the
    SHAPE model); the EMA weights differ from the training weights. `weights_shape`: weights of
    another shape than the config declares. Returns (training model, EMA model)."""
    model = tiny_model(1, weights_shape or SHAPE)
    ema_model = None
    if ema:
        ema_model = copy.deepcopy(model)
        with torch.no_grad():
            for p in ema_model.parameters():
                p.mul_(0.9)
    write_checkpoint(
        path,
        {
            "format_version": FORMAT_VERSION,
            "step": 40,
            "model": model.state_dict(),
            "ema": ema_model.state_dict() if ema_model is not None else None,
            "optimizer": {"state": {}, "param_groups": []},
            "config": build_config(dict(SHAPE)).public_dict(),
            "run_id": "tools-test",
        },
    )
    return model, ema_model


def pan_frames(count: int, width: int, height: int, photo: str = "astronaut") -> list[np.ndarray]:
    """`count` crops of a photograph, the camera moving 2 px right and 1 px down per frame."""
    image = getattr(photos, photo)()
    return [
        np.ascontiguousarray(image[90 + t : 90 + t + height, 170 + 2 * t : 170 + 2 * t + width])
        for t in range(count)
    ]


def write_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    rate: int = 25,
    audio: bool = False,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    crf: int | None = None,
) -> None:
    """Encode `frames` (uint8 HxWx3) into a video; with `audio`, a 440 Hz AAC tone as long."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream(
            codec, rate=rate, options={"crf": str(crf)} if crf is not None else {}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=SAMPLE_RATE)
            sound.layout = "mono"
        for array in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            samples = SAMPLE_RATE * len(frames) // rate
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)
            tone = tone.astype(np.float32)[None]
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(tone[:, start : start + 1024]),
                    format="fltp",
                    layout="mono",
                )
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))


def write_frame_folder(folder: Path, frames: list[np.ndarray], stem: str = "frame_") -> None:
    """PNG frames named frame_1 ... frame_N (natural order differs from plain string order)."""
    folder.mkdir(parents=True)
    for i, array in enumerate(frames, start=1):
        write_png(folder / f"{stem}{i}.png", array)


def decode_video(path: Path) -> dict[str, Any]:
    """Everything a test compares: RGB frames, their times, rate, and the audio packets' bytes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate)
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(Fraction(frame.pts) * stream.time_base)
    with av.open(str(path)) as container:
        audio = [
            (stream.codec_context.name, stream.sample_rate) for stream in container.streams.audio
        ]
        packets = [bytes(p) for p in container.demux(*container.streams.audio) if p.size]
    return {"frames": frames, "times": times, "rate": rate, "audio": audio, "packets": packets}


def reference_frames(model: VSRNet, lr: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """The model applied to the sliding window of every frame, edges repeated (written out here
    independently of the tool), in the same batch grouping as `upscale --batch`."""
    radius, last = model.num_frames // 2, len(lr) - 1
    windows = [
        torch.stack([to_tensor(lr[min(max(i + d, 0), last)]) for d in range(-radius, radius + 1)])
        for i in range(len(lr))
    ]
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            out.extend(to_uint8(model(torch.stack(windows[start : start + batch]))))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
