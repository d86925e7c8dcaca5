"""The upscale pipeline: decode, infer and encode overlapped on three threads.

    reader thread ──frames──▶ this thread: sliding windows, batches, model ──SR frames──▶ writer

The model runs on the calling thread (a Ctrl+C lands there, between two batches); the reader
decodes ahead and the writer encodes behind through bounded queues, so neither waits on the
other beyond the queue depth. Output frame i is the model applied to the window of NUM_FRAMES
input frames centred on i, the edges repeated (frame 0's window is [0, 0, 1] for 3 frames).
Any failure stops all three and is raised here; the caller removes the half-written output.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vsr_async.nn.tiling import TiledInference
from vsr_async.tools.pixels import to_pixels
from vsr_async.tools.video_sink import FrameSink
from vsr_async.tools.video_source import FrameInfo, FrameSource
from vsr_async.training.precision import PrecisionPlan

POLL_S = 0.1  # how often a blocked thread looks whether the others stopped


@dataclass
class InferencePlan:
    """How the model runs: where, in which precision, how many windows at once, which tiling."""

    model: nn.Module  # eval mode, on `device`
    device: torch.device
    precision: PrecisionPlan
    batch: int
    num_frames: int
    scale: int
    tiling: TiledInference

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def __call__(self, windows: Tensor) -> Tensor:
        """[B, T, 3, h, w] float in [0, 1] (CPU) -> [B, 3, H, W] on the device."""
        lr = windows.to(self.device, non_blocking=True)
        with self.autocast():
            return self.tiling(self.model, lr, scale=self.scale, name="batch")


class SlidingWindows:
    """Turns a stream of frames into the window of each frame, as soon as its last frame is in.

    Keeps only the frames a later window still needs; the stream's length is known at `finish`.
    """

    def __init__(self, num_frames: int) -> None:
        self.radius = num_frames // 2
        self._frames: dict[int, tuple[FrameInfo, np.ndarray]] = {}
        self._count = 0
        self._next = 0  # the next frame whose window is due

    def push(self, info: FrameInfo, frame: np.ndarray) -> list[tuple[FrameInfo, list[np.ndarray]]]:
        self._frames[self._count] = (info, frame)
        self._count += 1
        ready = []
        while self._next + self.radius < self._count:
            ready.append(self._window())
        return ready

    def finish(self) -> list[tuple[FrameInfo, list[np.ndarray]]]:
        ready = []
        while self._next < self._count:
            ready.append(self._window())
        return ready

    def _window(self) -> tuple[FrameInfo, list[np.ndarray]]:
        i, last = self._next, self._count - 1
        indices = [min(max(i + d, 0), last) for d in range(-self.radius, self.radius + 1)]
        window = [self._frames[j][1] for j in indices]
        info = self._frames[i][0]
        self._frames.pop(i - self.radius, None)  # no later window reaches back this far
        self._next += 1
        return info, window


class _Stopped(Exception):
    """Another stage failed or the run was interrupted: this one ends quietly."""


@dataclass
class _Failed:
    error: BaseException


_END = object()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        try:
            q.put(item, timeout=POLL_S)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped from None


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None


def _read(source: FrameSource, out: queue.Queue[Any], stop: threading.Event) -> None:
    """Reader thread: decode and hand on, as uint8 arrays (few calls that need the GIL)."""
    try:
        for info, array in source.frames():
            _put(out, (info, array), stop)  # uint8: the float conversion is batched later
        _put(out, _END, stop)
    except _Stopped:
        pass
    except BaseException as exc:  # handed on in order: the frames before it still count
        with contextlib.suppress(_Stopped):
            _put(out, _Failed(exc), stop)


class _Writer(threading.Thread):
    """Writer thread: encode each SR frame in order; the first error stops the pipeline."""

    def __init__(
        self, sink: FrameSink, stop: threading.Event, on_frame: Callable[[], None], depth: int
    ) -> None:
        super().__init__(name="upscale-writer", daemon=True)
        self.sink, self.stop, self.on_frame = sink, stop, on_frame
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (item := _get(self.queue, self.stop)) is not _END and not self.stop.is_set():
                self.sink.write(*item)
                self.on_frame()
        except _Stopped:
            pass
        except BaseException as exc:
            self.error = exc
            self.stop.set()


def run_pipeline(
    source: FrameSource, sink: FrameSink, plan: InferencePlan, on_frame: Callable[[], None]
) -> int:
    """Upscale every frame of `source` into `sink` (not closed here); returns the frame count."""
    stop = threading.Event()
    decoded: queue.Queue[Any] = queue.Queue(maxsize=plan.batch * plan.num_frames + plan.num_frames)
    reader = threading.Thread(
        target=_read, args=(source, decoded, stop), name="upscale-reader", daemon=True
    )
    writer = _Writer(sink, stop, on_frame, depth=2 * plan.batch)
    written = 0
    try:  # a Ctrl+C anywhere from here on still stops and joins both threads
        with _sigint_held():
            reader.start()
            writer.start()
        for batch in _batches(_windows(decoded, stop, plan.num_frames), plan.batch):
            infos = [info for info, _ in batch]
            windows = to_windows([frames for _, frames in batch])  # [B, T, 3, h, w]
            frames = to_pixels(plan(windows), sink.pixel_format)
            for info, frame in zip(infos, frames, strict=True):
                _put(writer.queue, (info, frame), stop)
            written += len(batch)
        _put(writer.queue, _END, stop)
        writer.join()
    except _Stopped:
        pass  # only the writer sets `stop` before this point: its error is raised below
    finally:
        # Both threads see `stop` within POLL_S; the caller closes the input and output only
        # after they are gone (FFmpeg crashes on a container closed under its decoder).
        stop.set()
        for thread in (reader, writer):
            if thread.is_alive():
                thread.join()
    if writer.error is not None:
        raise writer.error
    return written


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back while the threads start: a Ctrl+C inside `Thread.start()` would leave a
    running thread the cleanup cannot see yet. The threads inherit the mask, so the signal goes
    to this thread (where Python raises KeyboardInterrupt) once it is released."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def to_windows(batch: list[list[np.ndarray]]) -> Tensor:
    """B windows of T uint8 HxWx3 frames -> float [B, T, 3, h, w] in [0, 1], in one pass per
    batch (the values `data.images.to_tensor` gives each frame)."""
    stacked = torch.from_numpy(np.stack([np.stack(frames) for frames in batch]))  # [B,T,h,w,3]
    return stacked.permute(0, 1, 4, 2, 3).float().div_(255.0).contiguous()


def _windows(
    decoded: queue.Queue[Any], stop: threading.Event, num_frames: int
) -> Iterator[tuple[FrameInfo, list[np.ndarray]]]:
    sliding = SlidingWindows(num_frames)
    while True:
        item = _get(decoded, stop)
        if isinstance(item, _Failed):
            raise item.error
        if item is _END:
            yield from sliding.finish()
            return
        yield from sliding.push(*item)


def _batches(
    windows: Iterator[tuple[FrameInfo, list[np.ndarray]]], size: int
) -> Iterator[list[tuple[FrameInfo, list[np.ndarray]]]]:
    batch: list[tuple[FrameInfo, list[np.ndarray]]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
