"""The models a run can train, by name (config key MODEL), and the one way to build them.

`vsrnet` is this project's own model; `vsrpp` is the predecessor's VSRBidirectional_3x, kept so
its checkpoints continue here. Everything that builds a model (training, tools) goes through
`build_model`, and checkpoints record the name, so a resumed or loaded run rebuilds the same one.
"""

from __future__ import annotations

from typing import TypeAlias

from vsr_async.nn.model import VSRNet
from vsr_async.nn.vsrpp import VSRBidirectional_3x

Model: TypeAlias = VSRNet | VSRBidirectional_3x

DEFAULT_MODEL = "vsrnet"
MODELS: dict[str, type[Model]] = {"vsrnet": VSRNet, "vsrpp": VSRBidirectional_3x}


def build_model(name: str, *, n_feats: int, n_blocks: int, num_frames: int, scale: int) -> Model:
    """A freshly initialised model `name` of this shape (seed the RNG before, for a repeatable
    init); ValueError for an unknown name or a shape the model cannot take."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None
    return cls(n_feats, n_blocks, num_frames, scale)
