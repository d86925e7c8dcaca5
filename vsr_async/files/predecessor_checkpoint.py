"""The predecessor's (VSR++) checkpoint files: found, recognised and read, never written.

Its files lie in its Learn folder (DATA_ROOT itself) as `checkpoint_step_<step:07d>.pth`
(emergency saves `checkpoint_step_<step>_emergency.pth`; its first versions did not pad the
step) and hold `{step, model_state_dict, optimizer_state_dict, scheduler_state_dict, metrics,
timestamp}`, where `scheduler_state_dict` is its scheduler OBJECT pickled, with the AdamW
object inside it. `torch.load(weights_only=True)` refuses such an object, so the load maps
exactly those class names to inert stand-ins (`_SetAside`) inside the same restricted
unpickler: nothing of the file runs, the stand-ins only absorb attribute values, and they are
dropped; anything else that is not a tensor or plain value is still refused, in one line.

What is taken over: the weights, the step, and Adam's moments and step counts where every
parameter's state fits (see `optimizer_state_by_name`). Its scheduler, adaptive state and best
quality were not restored by the predecessor either; here they start fresh at its step.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsr_async.errors import CheckpointError
from vsr_async.files.checkpoints import why_unloadable

MODEL_NAME = "vsrpp"  # the config MODEL that builds its VSRBidirectional_3x
_NAME = re.compile(r"^checkpoint_step_(\d+)(?:_([A-Za-z0-9_]+))?\.pth$")
_KEYS = ("model_state_dict", "optimizer_state_dict", "step")
_OUR_KEY = "format_version"  # every checkpoint of ours has it; the predecessor's never
_ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
_FUSION = "fusion.conv"  # its optimizer's second group (10x LR): names containing this


@dataclass(frozen=True)
class PredecessorFile:
    """One checkpoint file of a predecessor Learn folder, as its name tells (nothing loaded)."""

    step: int
    path: Path
    kind: str  # "regular" (step % 10000 == 0), "emergency", or "best" (its own labels)


def list_predecessor_checkpoints(directory: Path) -> list[PredecessorFile]:
    """The predecessor's checkpoint files in `directory` (its DATA_ROOT), newest first: by
    step, then by modification time. Its `checkpoint_best*.pth` links point at these files and
    are not listed twice; `checkpoint_emergency.pth` of its first version holds step 0 whatever
    it was saved at, so it is not listed (resume it by path to continue from it anyway)."""
    found = []
    directory = Path(directory)
    if not directory.is_dir():
        return []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if not match or path.is_symlink() or not path.is_file():
            continue
        step, suffix = int(match.group(1)), match.group(2) or ""
        if "emergency" in suffix:
            kind = "emergency"
        elif step > 0 and step % 10_000 == 0:
            kind = "regular"
        else:
            kind = "best"
        found.append((step, _mtime(path), PredecessorFile(step, path, kind)))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [item[2] for item in found]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def is_predecessor_checkpoint(path: Path) -> bool:
    """Whether `path` is a PyTorch archive holding the predecessor's checkpoint dict.

    Reads only the archive's pickle opcodes (no tensor data, nothing executed): the string keys
    `model_state_dict`, `optimizer_state_dict` and `step` are there, our `format_version` not.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if not names:
                return False
            data = archive.read(names[0])
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False
    strings = set()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.add(arg)
    except (ValueError, pickle.UnpicklingError):  # a damaged pickle: not recognised
        return False
    return all(key in strings for key in _KEYS) and _OUR_KEY not in strings


class _SetAside:
    """Stand-in for the predecessor's pickled scheduler and optimizer objects: takes their
    attribute values (plain values and tensors only, as everything else is refused) and runs
    nothing. The values are dropped; the optimizer's state comes from `optimizer_state_dict`."""


def _plain_dict(_factory: Any = None) -> dict[Any, Any]:
    """Stand-in for `collections.defaultdict(dict)` (an optimizer's `state`): a plain dict."""
    return {}


# Class names of the objects inside its `scheduler_state_dict` and their stand-ins. Its
# scheduler is imported as `vsr_plus_plus.training...` by its train.py, as `training...` when
# run from inside its folder; the optimizer is torch's AdamW (Adam in early versions).
_STAND_INS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
    (_SetAside, "vsr_plus_plus.training.lr_scheduler.AdaptiveLRScheduler"),
    (_SetAside, "training.lr_scheduler.AdaptiveLRScheduler"),
    (_SetAside, "torch.optim.adamw.AdamW"),
    (_SetAside, "torch.optim.adam.Adam"),
    (_plain_dict, "collections.defaultdict"),
    (dict, "builtins.dict"),  # the defaultdict's factory argument, never called by the stand-in
]


@dataclass(frozen=True)
class PredecessorCheckpoint:
    """What a predecessor checkpoint holds that a run here continues from."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None  # its `optimizer_state_dict`, as saved
    metrics: dict[str, Any]  # its last validation's numbers (ki_quality, val_loss, ...) or {}
    timestamp: str | None


def load_predecessor_checkpoint(path: Path, *, lazy: bool = False) -> PredecessorCheckpoint:
    """Load one predecessor checkpoint on the CPU (weights_only, see the module docstring);
    anything unreadable or incomplete is a one-line CheckpointError naming the file. `lazy`
    maps the tensors instead of reading them, for callers that need only its step or metrics."""
    path = Path(path)
    if torch.__version__ < "2.6":  # (class, "name") stand-ins for safe_globals came with 2.6
        raise CheckpointError(
            path,
            f"reading VSR++ checkpoints safely needs torch >= 2.6 (this is {torch.__version__})",
        )
    try:
        with torch.serialization.safe_globals(_STAND_INS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of old files
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(path, f"cannot be loaded safely: {_refused(exc)}") from None
    except Exception as exc:  # torch raises many types for damaged archives
        raise CheckpointError(path, f"cannot be loaded: {why_unloadable(path, exc)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_state_dict"), Mapping):
        raise CheckpointError(path, "does not hold a VSR++ checkpoint (no model_state_dict)")
    step = raw.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(path, f"has no valid step (step = {step!r})")
    model_state = dict(raw["model_state_dict"])
    if not all(isinstance(v, torch.Tensor) for v in model_state.values()):
        raise CheckpointError(path, "has a model_state_dict with non-tensor values")
    optimizer = raw.get("optimizer_state_dict")
    metrics = raw.get("metrics")
    timestamp = raw.get("timestamp")
    return PredecessorCheckpoint(
        path=path,
        step=step,
        model_state=model_state,
        optimizer_state=optimizer if isinstance(optimizer, dict) else None,
        metrics=metrics if isinstance(metrics, dict) else {},
        timestamp=timestamp if isinstance(timestamp, str) else None,
    )


_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _refused(exc: pickle.UnpicklingError) -> str:
    """Why the restricted unpickler refused the file, in a few words (torch's text is long)."""
    match = _GLOBAL.search(str(exc))
    if match:
        return (
            f"it holds a pickled {match.group(1)} object, which torch.load(weights_only=True) "
            "does not run (only tensors and plain values are read)"
        )
    return "it holds pickled objects other than tensors and plain values"


def model_shape(model_state: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """N_FEATS and N_BLOCKS of a VSRBidirectional_3x state dict; None when it is not one."""
    weight = model_state.get("feat_extract.weight")
    trunk = {k.split(".")[1] for k in model_state if k.startswith("backward_trunk.")}
    if weight is None or weight.dim() != 4 or not trunk or "fusion.conv.weight" not in model_state:
        return None
    return {"N_FEATS": int(weight.shape[0]), "N_BLOCKS": 2 * len(trunk)}


def check_fits(checkpoint: PredecessorCheckpoint, config: Any) -> None:
    """Refuse, in one line naming the keys, a checkpoint the configured model cannot take."""
    path = checkpoint.path
    if config.MODEL != MODEL_NAME:
        raise CheckpointError(path, wrong_model_message())
    shape = model_shape(checkpoint.model_state)
    if shape is None:
        raise CheckpointError(path, "does not hold a VSRBidirectional_3x model (other names)")
    half = max(1, config.N_BLOCKS // 2)
    if shape["N_FEATS"] != config.N_FEATS or shape["N_BLOCKS"] != 2 * half:
        raise CheckpointError(
            path,
            f"holds a VSRBidirectional_3x with N_FEATS={shape['N_FEATS']}, "
            f"N_BLOCKS={shape['N_BLOCKS']} (config has N_FEATS={config.N_FEATS}, "
            f"N_BLOCKS={config.N_BLOCKS}); use the same values",
        )


def wrong_model_message() -> str:
    return (
        "is a VSR++ (predecessor) checkpoint of its VSRBidirectional_3x; set "
        f'MODEL = "{MODEL_NAME}" in the config (or --set MODEL={MODEL_NAME}) to continue it'
    )


def optimizer_state_by_name(
    saved: dict[str, Any] | None, params: Mapping[str, torch.Size]
) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """Its optimizer's per-parameter state keyed by parameter name, or (None, why not).

    Its `optimizer_state_dict` numbers the parameters across its groups: one group of
    `model.parameters()` in early versions, later two (everything but the final fusion conv,
    then `fusion.conv.*` with 10x LR). `params` is the model's names → shapes in registration
    order (the predecessor's order). Taken only when the group sizes match one of those
    layouts and every state is Adam's with tensors of the parameter's shape; the
    hyperparameters (LR, weight decay, ...) are this run's config, never the file's.
    """
    if saved is None:
        return None, "the file has no optimizer_state_dict"
    try:
        groups = [list(group["params"]) for group in saved["param_groups"]]
        state = dict(saved["state"])
    except (KeyError, TypeError):
        return None, "its optimizer_state_dict is not a torch optimizer state"
    names = list(params)
    layouts = [
        [names],
        [[n for n in names if _FUSION not in n], [n for n in names if _FUSION in n]],
    ]
    sizes = [len(g) for g in groups]
    layout = next((lay for lay in layouts if [len(g) for g in lay] == sizes), None)
    if layout is None:
        return None, (
            f"its parameter groups ({'+'.join(map(str, sizes))} parameters) do not match "
            f"this model's {len(names)} parameters"
        )
    by_index = {
        index: name
        for group, lay in zip(groups, layout, strict=True)
        for index, name in zip(group, lay, strict=True)
    }
    result: dict[str, dict[str, Any]] = {}
    for index, entry in state.items():
        name = by_index.get(index)
        if name is None or not isinstance(entry, dict):
            return None, f"its state has an entry ({index!r}) for no parameter"
        if not set(entry) <= _ADAM_KEYS:
            return None, f"it is not Adam's state (keys {', '.join(sorted(map(str, entry)))})"
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor | float | int):
                return None, f"{name}: {key} is not a number"
            if key != "step" and (
                not isinstance(value, torch.Tensor) or value.shape != params[name]
            ):
                return None, f"{name}: {key} does not have the parameter's shape"
        result[name] = dict(entry)
    return result, ""
