"""Image files ↔ arrays ↔ tensors: the one place that decodes and encodes pixels.

Arrays are uint8 HxWx3 RGB; tensors are float32 [3, H, W] in [0, 1]. Every decoding failure
becomes a `DatasetError` naming the file, so callers never see PIL's many exception types; a
process out of descriptors or memory is a `ProcessResourceError` instead, never the file's fault.
"""

from __future__ import annotations

import errno
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vsr_async.data.listing import os_error_reason
from vsr_async.errors import DatasetError, ProcessResourceError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What PIL raises for broken or hostile files; any of them is the file's fault, not ours.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    TypeError,
    IndexError,
    struct.error,
    zlib.error,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


_RESOURCE_ERRNOS = {
    errno.EMFILE: "this process is out of file descriptors (Too many open files, limit {limit})",
    errno.ENFILE: "the machine is out of file descriptors (Too many open files in system)",
    errno.ENOMEM: "out of memory",
    errno.ENOBUFS: "out of buffer space",
}


def resource_error(path: Path | str, exc: BaseException) -> ProcessResourceError | None:
    """The ProcessResourceError `exc` stands for, or None when it may be the file's fault."""
    if isinstance(exc, MemoryError):
        return ProcessResourceError(path, "out of memory")
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return ProcessResourceError(path, _RESOURCE_ERRNOS[exc.errno].format(limit=limit))
    return None


def read_rgb(path: Path | str) -> np.ndarray:
    """Decode an image fully into uint8 HxWx3 RGB.

    Gray, gray+alpha, palette and RGBA become RGB (alpha is dropped, as video frames have none);
    16-bit images are scaled to 8 bits rather than clipped.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _as_rgb8(img, path)
    except (*_DECODE_ERRORS, MemoryError) as exc:
        raise resource_error(path, exc) or _decode_error(path, exc) from None


def read_size(path: Path | str) -> tuple[int, int]:
    """(W, H) from the file header only: fast enough to check 100k files before training.

    PNG headers are parsed directly (one 33-byte read); other formats go through PIL's lazy open.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError as exc:
        raise resource_error(path, exc) or _decode_error(path, exc) from None
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 33 or head[12:16] != b"IHDR":
            raise DatasetError(path, "unreadable image: PNG header is damaged")
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0 or width > 2**31 or height > 2**31:
            raise DatasetError(path, f"unreadable image: PNG header says {width}x{height}")
        return width, height
    try:
        with Image.open(path) as img:
            return img.size
    except (*_DECODE_ERRORS, MemoryError) as exc:
        raise resource_error(path, exc) or _decode_error(path, exc) from None


def write_png(path: Path | str, array: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 HxWx3 (RGB) or HxW (gray, a third of the bytes) as PNG."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"write_png wants uint8 HxW or HxWx3, got {array.dtype} {array.shape}")
    Image.fromarray(np.ascontiguousarray(array)).save(path, compress_level=compress_level)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 (or NxHxWx3) → float32 [3, H, W] (or [N, 3, H, W]) in [0, 1]."""
    if not array.flags.writeable:  # torch warns on read-only numpy memory
        array = array.copy()
    return torch.from_numpy(array).movedim(-1, -3).float().div_(255.0).contiguous()


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float [3, H, W] (or [N, 3, H, W]) in [0, 1] → uint8 HxWx3 (or NxHxWx3), rounded."""
    scaled = tensor.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round_()
    return scaled.to(torch.uint8).movedim(-3, -1).contiguous().numpy()


def _as_rgb8(img: Image.Image, path: Path | str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit gray (PNG, TIFF): PIL's convert("RGB") would clip at 255 instead of scaling.
        wide = np.asarray(img).astype(np.float32)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise DatasetError(path, "unreadable image: floating-point images are not supported")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when palette transparency goes straight to RGB
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy


def _decode_error(path: Path | str, exc: BaseException) -> DatasetError:
    return DatasetError(path, f"unreadable image: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:  # the file system, not the pixels
        return os_error_reason(exc)
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
