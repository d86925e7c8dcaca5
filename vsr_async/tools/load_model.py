"""A trained model for the tools, from one of our `.pt` checkpoints or an exported weights file.

The model is built from the shape the file declares (a checkpoint's config, a weights file's
metadata), so the tools need no config; weights that do not fit that shape are a one-line
`CheckpointError` naming the first tensor that differs. A checkpoint's EMA weights are used when
it has them (they are what validation scored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vsr_async.errors import CheckpointError
from vsr_async.files.checkpoints import SHAPE_DEFAULTS, SHAPE_KEYS, load_checkpoint
from vsr_async.nn import models
from vsr_async.tools.weights_file import WEIGHTS_SUFFIX, read_weights


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on the CPU, with what the user should know about where it came from."""

    model: nn.Module
    shape: dict[str, Any]  # SHAPE_KEYS -> value (MODEL a name, the sizes whole numbers)
    weights: str  # "EMA" or "training": which weights of the checkpoint were loaded
    step: int | None
    source: Path

    @property
    def num_frames(self) -> int:
        return int(self.shape["NUM_FRAMES"])

    @property
    def scale(self) -> int:
        return int(self.shape["SCALE"])

    def describe(self) -> str:
        """'N_FEATS=8 N_BLOCKS=2 NUM_FRAMES=3 SCALE=x2, EMA weights of step 40'."""
        keys = " ".join(f"{k}={'x' if k == 'SCALE' else ''}{v}" for k, v in self.shape.items())
        step = f" of step {self.step}" if self.step is not None else ""
        return f"{keys}, {self.weights} weights{step}"


def build_model(shape: Mapping[str, Any]) -> nn.Module:
    """The network for a model shape (SHAPE_KEYS): the one place the tools construct a model."""
    return models.build_model(
        str(shape["MODEL"]),
        n_feats=int(shape["N_FEATS"]),
        n_blocks=int(shape["N_BLOCKS"]),
        num_frames=int(shape["NUM_FRAMES"]),
        scale=int(shape["SCALE"]),
    )


def load_model(path: Path) -> LoadedModel:
    """The model stored in `path`: an exported weights file (.safetensors) or a checkpoint."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return _load_exported(path)
    state = load_checkpoint(path)
    shape = shape_of(state["config"], path)
    ema = state.get("ema")
    weights = ema if ema is not None else state["model"]
    model = _fitted_model(shape, weights, path)
    return LoadedModel(model, shape, "EMA" if ema is not None else "training", state["step"], path)


def shape_of(values: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The model shape a checkpoint's config or a weights file's metadata declares (files from
    before the MODEL key hold our default model)."""
    values = {**SHAPE_DEFAULTS, **values}
    missing = [k for k in SHAPE_KEYS if k not in values]
    if missing:
        raise CheckpointError(path, f"does not say its model shape (missing {', '.join(missing)})")
    try:
        return {k: str(values[k]) if k == "MODEL" else int(values[k]) for k in SHAPE_KEYS}
    except (TypeError, ValueError):
        found = ", ".join(f"{k}={values[k]!r}" for k in SHAPE_KEYS)
        raise CheckpointError(
            path, f"has a model shape that is not whole numbers: {found}"
        ) from None


def _fitted_model(
    shape: dict[str, Any], weights: Mapping[str, torch.Tensor], path: Path
) -> nn.Module:
    try:
        model = build_model(shape)
    except ValueError as exc:  # a shape this version cannot build (e.g. an even NUM_FRAMES)
        raise CheckpointError(path, f"has a model shape this version cannot build: {exc}") from None
    problem = weights_mismatch(model.state_dict(), weights)
    if problem:
        declared = " ".join(f"{k}={v}" for k, v in shape.items())
        raise CheckpointError(
            path, f"weights do not fit the model shape it declares ({declared}): {problem}"
        )
    model.load_state_dict(weights)
    return model.eval().requires_grad_(False)


def weights_mismatch(wanted: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str:
    """'' when `found` fits `wanted` tensor for tensor; else the first difference, in words."""
    for name, tensor in wanted.items():
        if name not in found:
            return f"{name} is missing"
        other = found[name]
        if not isinstance(other, torch.Tensor):
            return f"{name} is not a tensor"
        if other.shape != tensor.shape:
            return f"{name} is {list(other.shape)} in the file, {list(tensor.shape)} in the model"
    extra = sorted(set(found) - set(wanted))
    return f"{extra[0]} is not part of this model" if extra else ""


def _load_exported(path: Path) -> LoadedModel:
    metadata, weights = read_weights(path)
    shape = shape_of(metadata, path)
    model = _fitted_model(shape, weights, path)
    step = metadata.get("step")
    return LoadedModel(
        model, shape, metadata.get("weights", "EMA"), int(step) if step else None, path
    )
