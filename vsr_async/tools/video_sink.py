"""Frames out: a video file (H.264 yuv420p at a CRF quality, or lossless FFV1) with the input's
frame rate, timestamps and audio streams (copied packet for packet), or a folder of PNGs.

Sinks write into a temp path that the caller renames into place when everything succeeded
(`files.atomic.atomic_path` / `atomic_folder`). `write` runs on the writer thread; `close` and
`abort` after it has stopped. FFmpeg failures become one-line `OutputError`s naming the output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vsr_async.data.images import write_png
from vsr_async.errors import OutputError
from vsr_async.tools.extras import require
from vsr_async.tools.video_source import FrameInfo

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
"""Output file suffix -> FFmpeg muxer. The temp file's own suffix is `.tmp`, so the muxer is
named explicitly."""


@dataclass(frozen=True)
class Codec:
    encoder: str
    pix_fmt: str  # what the encoder stores
    given: str  # what the pipeline hands the sink (pixels.PIXEL_FORMATS)
    suffixes: tuple[str, ...]  # containers that hold it


CODECS = {
    # YUV 4:2:0 made on the device (pixels.py), so the writer thread does no colour conversion
    "h264": Codec("libx264", "yuv420p", "yuv420p", (".mp4", ".m4v", ".mov", ".mkv")),
    # RGB kept as RGB (FFmpeg only reorders bytes): lossless, bit-exact round trips
    "ffv1": Codec("ffv1", "bgr0", "rgb24", (".mkv",)),
}
DEFAULT_CRF = 18  # x264's "visually lossless" region; 23 is its own default
BT601, TV_RANGE = 6, 1  # AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 6 costs ~4x the time for ~15 % less size


def check_video_output(target: Path, codec: str, width: int, height: int) -> None:
    """Refuse, before any work, an output this codec and container cannot hold."""
    suffix = target.suffix.lower()
    spec = CODECS[codec]
    if suffix not in spec.suffixes:
        raise OutputError(
            target,
            f"a {codec.upper()} video goes in {', '.join(spec.suffixes)}, not {suffix}",
        )
    if spec.pix_fmt == "yuv420p" and (width % 2 or height % 2):
        raise OutputError(
            target,
            f"H.264 yuv420p needs an even frame size, the output is {width}x{height} "
            "(use --codec ffv1 with .mkv, or a PNG folder)",
        )


class VideoSink:
    """Encodes RGB frames into `temp` (the container `target`'s suffix names); copies the audio
    streams of `audio_from`, interleaved by time with the video."""

    def __init__(
        self,
        temp: Path,
        target: Path,
        *,
        codec: str,
        crf: int,
        size: tuple[int, int],
        rate: Fraction,
        time_base: Fraction,
        audio_from: Path | None,
    ) -> None:
        av = require("av", "writing videos")
        self.av, self.target, self.time_base, self.rate = av, target, time_base, rate
        spec = CODECS[codec]
        self.pixel_format = spec.given
        self._audio_in: Any = None
        self._audio_out: dict[int, Any] = {}
        # FFmpeg may not shift timestamps: the output keeps the input's (an MP4's audio often
        # starts a little before 0 to prime the decoder).
        try:
            self.container = av.open(
                str(temp),
                "w",
                format=CONTAINERS[target.suffix.lower()],
                options={"avoid_negative_ts": "disabled"},
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(target, f"cannot be created ({_reason(exc)})") from None
        try:
            options = {"crf": str(crf)} if spec.encoder == "libx264" else {}
            self.stream = self.container.add_stream(spec.encoder, rate=rate, options=options)
            self.stream.width, self.stream.height = size
            self.stream.pix_fmt = spec.pix_fmt
            if spec.pix_fmt == "yuv420p":  # tagged as pixels.py converts: BT.601, TV range
                self.stream.codec_context.colorspace = BT601
                self.stream.codec_context.color_range = TV_RANGE
            self.stream.codec_context.time_base = time_base  # the input's: timestamps kept exactly
            self.stream.time_base = time_base
            if audio_from is not None:
                self._open_audio(audio_from)
            self.container.start_encoding()
            self._pending_audio = self._next_audio()
        except (av.error.FFmpegError, ValueError) as exc:
            self.abort()
            audio = " with the input's audio" if self._audio_out else ""
            raise OutputError(target, f"cannot be written{audio} ({_reason(exc)})") from None
        except BaseException:  # Ctrl+C: close FFmpeg's handles before the temp file goes
            self.abort()
            raise
        self._last_pts: int | None = None

    def _open_audio(self, source: Path) -> None:
        self._audio_in = self.av.open(str(source), metadata_errors="ignore")
        for stream in self._audio_in.streams.audio:
            self._audio_out[stream.index] = self.container.add_stream_from_template(stream)
        self._audio_packets = self._audio_in.demux(*self._audio_in.streams.audio)

    def _next_audio(self) -> Any:
        if self._audio_in is None:
            return None
        for packet in self._audio_packets:
            if packet.dts is not None:  # the demuxer's final empty packet has none
                return packet
        return None

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Mux the audio packets that start before `seconds` (all of them for None)."""
        packet = self._pending_audio
        while packet is not None and (seconds is None or _seconds(packet) <= seconds):
            packet.stream = self._audio_out[packet.stream.index]
            self.container.mux(packet)
            packet = self._next_audio()
        self._pending_audio = packet

    def write(self, info: FrameInfo, array: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(array, format=self.pixel_format)
        frame.pts = self._pts(info)
        frame.time_base = self.time_base
        try:
            self._mux_audio_until(float(frame.pts * self.time_base))
            self.container.mux(self.stream.encode(frame))
        except self.av.error.FFmpegError as exc:
            raise OutputError(
                self.target, f"encoding failed at frame {info.index} ({_reason(exc)})"
            ) from None

    def _pts(self, info: FrameInfo) -> int:
        """The input frame's timestamp; counted from the rate where the input has none."""
        pts = info.pts
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            step = max(round(1 / (self.rate * self.time_base)), 1)
            pts = info.index * step if self._last_pts is None else self._last_pts + step
        self._last_pts = pts
        return pts

    def close(self) -> None:
        """Flush the encoder and the rest of the audio, and finish the file."""
        try:
            self.container.mux(self.stream.encode(None))
            self._mux_audio_until(None)
            self.container.close()
        except self.av.error.FFmpegError as exc:
            self.abort()
            raise OutputError(self.target, f"cannot be finished ({_reason(exc)})") from None
        finally:
            if self._audio_in is not None:
                self._audio_in.close()

    def abort(self) -> None:
        """Close what is open, quietly (the caller removes the temp file)."""
        for container in (self.container, self._audio_in):
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()


class PngFolderSink:
    """One PNG per frame in `temp` (the folder renamed into place later): the input frame's name
    for a frame folder, else the frame number (000000.png, ...)."""

    pixel_format = "rgb24"

    def __init__(self, temp: Path, target: Path) -> None:
        self.temp, self.target = temp, target

    def write(self, info: FrameInfo, array: np.ndarray) -> None:
        name = f"{info.name or f'{info.index:06d}'}.png"
        try:
            write_png(self.temp / name, array, compress_level=PNG_COMPRESS_LEVEL)
        except OSError as exc:
            raise OutputError(self.target, f"cannot write {name}: {exc.strerror or exc}") from None

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


FrameSink = VideoSink | PngFolderSink


def _seconds(packet: Any) -> float:
    return float(packet.dts * packet.time_base)


def _reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    text = str(strerror or exc)
    return text.splitlines()[0] if text else type(exc).__name__
