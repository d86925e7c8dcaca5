"""Reading the user's videos for `prepare` with PyAV (the `av` package, whose wheels bundle
FFmpeg): a first pass that checks a video, counts its frames and finds its scene cuts on small
luma thumbnails, and a second that yields its frames as RGB arrays.

Every failure (not a video, no video stream, a frame that does not decode, a file that ends
before the frames its container declares) is one `VideoError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsr_async.errors import VsrError
from vsr_async.names import display_name
from vsr_async.tools.scene_cuts import THUMB_WIDTH, CutDetector

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
    | {".y4m", ".mts", ".m2ts", ".3gp", ".ogv"}
)


class VideoError(VsrError):
    """A video that cannot be read; `path` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"video {display_name(self.path)}: {message}")


@dataclass(frozen=True)
class VideoScan:
    """What the first pass found: size, frame count and where new shots begin."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float | None
    cuts: tuple[int, ...]  # frame numbers that start a new shot (never 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "cuts": list(self.cuts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoScan:
        return cls(
            Path(data["path"]),
            int(data["frames"]),
            int(data["width"]),
            int(data["height"]),
            data["fps"],
            tuple(int(c) for c in data["cuts"]),
        )


def expand_inputs(paths: list[Path]) -> list[Path]:
    """The video files named, a folder standing for the video files directly in it."""
    from vsr_async.data.listing import natural_key

    videos: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                (
                    p
                    for p in path.iterdir()
                    if p.is_file()
                    and not p.name.startswith(".")
                    and p.suffix.lower() in VIDEO_SUFFIXES
                ),
                key=lambda p: natural_key(p.name),
            )
            if not found:
                shown = ", ".join(sorted(VIDEO_SUFFIXES))
                raise VideoError(path, f"folder holds no video files ({shown})")
            videos += found
        elif not path.exists():
            raise VideoError(path, "no such file")
        else:
            videos.append(path)
    return videos


def file_identity(path: Path) -> dict[str, Any]:
    """What says a video is still the one an unfinished prepare read: path, size, mtime."""
    stat = os.stat(path)
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def pyav() -> Any:
    """The `av` module (PyAV), or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise VsrError(
            "reading and writing videos needs PyAV, which is not installed: "
            "pip install 'vsr_async[video]' (or: pip install av)"
        ) from None
    return av


def _open(path: Path) -> Any:
    av = pyav()

    if not path.is_file():
        raise VideoError(path, "is not a file" if path.exists() else "no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(path, f"cannot be opened as a video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream")
    return container


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]


def _frames(path: Path, container: Any) -> Iterator[Any]:
    """The decoded frames of the first video stream; a decoding failure names the frame."""
    av = pyav()

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    count = 0
    try:
        for frame in container.decode(stream):
            yield frame
            count += 1
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(
            path, f"cannot be decoded after {count} frames ({_reason(exc)}): damaged or truncated"
        ) from None
    declared = stream.frames
    if count == 0:
        raise VideoError(path, "holds no decodable frame")
    if declared and count < declared:
        raise VideoError(path, f"ends early: {count} of the {declared} frames it declares decode")


def scan_video(
    path: Path, cut_threshold: float, progress: Callable[[int], None] | None = None
) -> VideoScan:
    """Decode every frame once: count, check one size throughout, and find the scene cuts."""
    detector = CutDetector(cut_threshold)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate
        fps = float(rate) if rate else None
        width = height = 0
        cuts = []
        index = 0
        for index, frame in enumerate(_frames(path, container)):
            if index == 0:
                width, height = frame.width, frame.height
            elif (frame.width, frame.height) != (width, height):
                raise VideoError(
                    path,
                    f"frame {index} is {frame.width}x{frame.height}, frame 0 {width}x{height}; "
                    "a video whose frame size changes cannot be prepared",
                )
            thumb_h = max(1, round(THUMB_WIDTH * height / width))
            thumb = frame.reformat(
                width=THUMB_WIDTH, height=thumb_h, format="gray", interpolation="AREA"
            ).to_ndarray()
            if detector.push(thumb):
                cuts.append(index)
            if progress is not None:
                progress(index + 1)
        return VideoScan(path, index + 1, width, height, fps, tuple(cuts))
    finally:
        container.close()


def read_frames(path: Path, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, uint8 HxWx3 RGB) of every frame from `start` on."""
    container = _open(path)
    try:
        for index, frame in enumerate(_frames(path, container)):
            if index >= start:
                yield index, frame.to_ndarray(format="rgb24")
    finally:
        container.close()
