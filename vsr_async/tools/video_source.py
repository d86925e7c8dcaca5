"""Frames in: a video file (any container and codec FFmpeg decodes, through PyAV) or a folder of
image frames, as uint8 HxWx3 RGB arrays in display order with their timestamps.

Every failure is a one-line `InputError` naming the input: not a video, no video stream, an
unreadable frame, a file that ends before the frames its header declares (a truncated copy).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vsr_async.data.images import read_rgb, read_size
from vsr_async.data.listing import IMAGE_SUFFIXES, natural_key
from vsr_async.errors import DatasetError, InputError
from vsr_async.tools.extras import require

DEFAULT_FOLDER_FPS = Fraction(25)


@dataclass(frozen=True)
class FrameInfo:
    """One input frame: its position, presentation time (in the source's time base; None when
    the container has none) and, for a frame folder, its file name."""

    index: int
    pts: int | None
    name: str = ""


@dataclass
class VideoSource:
    """The first video stream of a file. `frame_count`: what the header declares, counted or
    from its duration (None if it says neither); `declared_s`: the duration, when no count."""

    path: Path
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frame_count: int | None
    declared_s: float | None
    has_audio: bool
    _container: Any

    kind = "video"

    @classmethod
    def open(cls, path: Path) -> VideoSource:
        av = require("av", "reading videos")
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except IsADirectoryError:
            raise InputError(path, "is a folder") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise InputError(path, f"not a video FFmpeg can read ({_reason(exc)})") from None
        if not container.streams.video:
            container.close()
            raise InputError(path, "has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            container.close()
            raise InputError(path, "its video stream has no frame size (damaged header)")
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
        time_base = Fraction(stream.time_base or 1 / rate)
        frames, seconds = _declared_length(stream)
        if frames is None and seconds:
            frames = round(seconds * rate)
        return cls(
            path,
            width,
            height,
            rate,
            time_base,
            frames,
            seconds,
            bool(container.streams.audio),
            container,
        )

    def frames(self) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        av = require("av", "reading videos")
        stream = self._container.streams.video[0]
        count, end_s = 0, 0.0
        try:
            for frame in self._container.decode(stream):
                if (frame.width, frame.height) != (self.width, self.height):
                    raise InputError(
                        self.path,
                        f"frame {count} is {frame.width}x{frame.height}, the stream "
                        f"{self.width}x{self.height} (a size change inside one video is not "
                        "supported)",
                    )
                yield FrameInfo(count, frame.pts), frame.to_ndarray(format="rgb24")
                count += 1
                start_s = float(frame.time) if frame.time is not None else (count - 1) / self.rate
                end_s = start_s + float(1 / self.rate)
        except av.error.FFmpegError as exc:
            raise InputError(
                self.path,
                f"decoding fails after {count} good frames ({_reason(exc)}): a damaged or "
                "truncated file",
            ) from None
        if count == 0:
            raise InputError(
                self.path, "no frame of its video stream decodes (a damaged or truncated file)"
            )
        self._check_complete(count, end_s)

    def _check_complete(self, count: int, end_s: float) -> None:
        """A file that stops before what its header declares is truncated or damaged."""
        if self.declared_s is None and self.frame_count is not None and count < self.frame_count:
            raise InputError(
                self.path,
                f"ends early: {count} of the {self.frame_count} frames its header declares "
                "decode (a truncated or damaged file)",
            )
        if self.declared_s is not None and end_s < self.declared_s - 1.5 / self.rate:
            raise InputError(
                self.path,
                f"ends early: its frames decode up to {end_s:.2f} s of the {self.declared_s:.2f} s "
                "its header declares (a truncated or damaged file)",
            )

    def close(self) -> None:
        self._container.close()


def _declared_length(stream: Any) -> tuple[int | None, float | None]:
    """(frames, seconds) the header declares: the stream's frame count (MP4), else its duration
    (Matroska keeps a per-stream DURATION tag); None where it says nothing (no truncation check)."""
    if stream.frames:
        return int(stream.frames), None
    if stream.duration and stream.time_base:
        return None, float(stream.duration * stream.time_base)
    if "DURATION" in (stream.metadata or {}):
        return None, _clock_seconds(stream.metadata["DURATION"])
    return None, None


def _clock_seconds(text: str) -> float | None:
    """'00:00:01.280000000' -> 1.28; None when it is not such a clock."""
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


@dataclass
class FolderSource:
    """Image frames in one folder, in natural name order (frame_2 before frame_10)."""

    path: Path
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frame_count: int
    files: list[Path]

    kind = "folder"
    has_audio = False

    @classmethod
    def open(cls, path: Path, fps: Fraction) -> FolderSource:
        try:
            names = sorted((e.name for e in os.scandir(path) if e.is_file()), key=natural_key)
        except OSError as exc:
            raise InputError(path, f"cannot be listed: {exc.strerror or exc}") from None
        files = [path / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            kinds = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
            raise InputError(path, f"holds no image frames ({kinds})")
        try:
            width, height = read_size(files[0])
        except DatasetError as exc:
            raise _as_input_error(exc) from None
        return cls(path, width, height, fps, 1 / fps, len(files), files)

    def frames(self) -> Iterator[tuple[FrameInfo, np.ndarray]]:
        stems = [file.stem for file in self.files]
        keep_names = len(set(stems)) == len(stems)  # a.png and a.jpg: number the outputs instead
        for index, file in enumerate(self.files):
            try:
                array = read_rgb(file)
            except DatasetError as exc:
                raise _as_input_error(exc) from None
            if array.shape[:2] != (self.height, self.width):
                raise InputError(
                    file,
                    f"is {array.shape[1]}x{array.shape[0]}, the first frame "
                    f"{self.width}x{self.height} (all frames must have one size)",
                )
            yield FrameInfo(index, index, file.stem if keep_names else ""), array

    def close(self) -> None:
        pass


FrameSource = VideoSource | FolderSource


def open_source(path: Path, fps: Fraction | None = None) -> FrameSource:
    """A video file or a frame folder, by what `path` is."""
    path = Path(path)
    if path.is_dir():
        return FolderSource.open(path, fps or DEFAULT_FOLDER_FPS)
    return VideoSource.open(path)


def _as_input_error(exc: DatasetError) -> InputError:
    """A frame's DatasetError ('dataset F: unreadable image: ...') said as an input error."""
    return InputError(exc.path, str(exc).removeprefix(f"dataset {exc.path}: "))


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason without the '[Errno N]' prefix and the repeated file name."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc).splitlines()[0] if (strerror or str(exc)) else type(exc).__name__
