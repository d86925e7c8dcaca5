"""The exported weights file: a safetensors file of the model's tensors only, with the model's
shape in its metadata, so it can be shared and loaded without our checkpoint's training state.

Metadata (all strings, as safetensors wants): `format` = "vsr_async.weights", `format_version`,
every SHAPE_KEYS entry, `weights` ("EMA" or "training"), `step` and `source` (the checkpoint's
file name). Written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vsr_async.errors import CheckpointError
from vsr_async.files.atomic import write_atomic
from vsr_async.tools.extras import require

WEIGHTS_FORMAT = "vsr_async.weights"
WEIGHTS_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"


def weights_metadata(
    shape: Mapping[str, Any], weights: str, step: int | None, source: str
) -> dict[str, str]:
    values = {"format": WEIGHTS_FORMAT, "format_version": str(WEIGHTS_FORMAT_VERSION)}
    values.update({k: str(v) for k, v in shape.items()})
    values.update(weights=weights, source=source)
    if step is not None:
        values["step"] = str(step)
    return values


def write_weights(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Blocking atomic write of `tensors` (CPU) with `metadata`."""
    require("safetensors", "export")
    from safetensors.torch import save

    contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_atomic(path, save(contiguous, metadata=dict(metadata)))


def read_weights(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of an exported file; anything else is a one-line CheckpointError."""
    require("safetensors", "reading exported weights")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from None
    except SafetensorError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            path, f"cannot be loaded: not a safetensors file ({reason})"
        ) from None
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(path, "is a safetensors file, but not weights exported by vsr_async")
    if metadata.get("format_version") != str(WEIGHTS_FORMAT_VERSION):
        raise CheckpointError(
            path,
            f"has weights format {metadata.get('format_version')}, this version reads "
            f"{WEIGHTS_FORMAT_VERSION}",
        )
    return metadata, tensors
