"""The predecessor's (VSR++) config keys that are not ours: the one table saying what each means
here — the key of ours it maps to (and how its value converts), or why it has no effect here.

The keys come from VSR++'s shipped config files (`config.py.example`, `config.py.active`,
`config_p4_optimized.py`, the committed `config.py`) and from its code's `config.get(...)` /
`config[...]` reads (trainer, dashboard, live menu, TensorBoard logger), including the lowercase
keys of its `runtime_config.json`. Keys spelled as ours (N_FEATS, MAX_LR, ...) are ours and need no
entry. A key in neither is still an error naming it. Everything that reads old keys — config
files, `--set`, PATCH /api/config, the predecessor's runtime_config.json — goes through this table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vsr_async.errors import ConfigError
from vsr_async.settings.values import convert_string


def _same(value: Any) -> Any:
    return value


def _amp(value: Any) -> Any:
    """USE_AMP (true/false) → AMP: true lets the card choose ("auto"), false is "off"."""
    if isinstance(value, str):
        value = convert_string("USE_AMP", value, bool)
    if not isinstance(value, bool):
        raise ConfigError("USE_AMP", f"must be true or false, got {value!r}")
    return "auto" if value else "off"


@dataclass(frozen=True, slots=True)
class Mapped:
    """The predecessor's key means our `key`; `convert` turns its value into ours."""

    key: str
    convert: Callable[[Any], Any] = _same


@dataclass(frozen=True, slots=True)
class NoEffect:
    """Accepted, and named in one log line saying `why` it does nothing here."""

    why: str


_PLATEAU = (
    "VSR++ counted it on the noisy per-batch loss; plateaus here are judged on the smoothed "
    "loss and the validation quality, so its numbers do not carry over"
)

PREDECESSOR_KEYS: dict[str, Mapped | NoEffect] = {
    # --- its config files (UPPERCASE) ---------------------------------------------------------
    "USE_GRADIENT_CHECKPOINTING": Mapped("GRADIENT_CHECKPOINTING"),
    "USE_CHECKPOINTING": Mapped("GRADIENT_CHECKPOINTING"),  # its model's argument name
    "USE_AMP": Mapped("AMP", _amp),
    "VAL_BATCH_SIZE": NoEffect(
        "validation runs one clip at a time here, so its metrics and memory never depend on a "
        "batch size"
    ),
    "LR_UPDATE_EVERY": NoEffect(
        "the learning rate is set at every optimizer step here (VSR++ recomputed it every N)"
    ),
    "DISPLAY_MODE": NoEffect(
        "the dashboard's layer-activity view is switched with the s key while it runs"
    ),
    "GRAD_CLIP": NoEffect(
        "VSR++ only displayed it; the gradient clip here starts at INITIAL_GRAD_CLIP (and "
        "follows the gradient norms when ADAPTIVE_GRAD_CLIP is on)"
    ),
    "MODEL_CONFIG": NoEffect(
        "VSR++ read it for its status file only; the model's shape is N_FEATS and N_BLOCKS"
    ),
    # --- its runtime_config.json (lowercase; its dashboard read them from the config too) -----
    "max_lr": Mapped("MAX_LR"),
    "min_lr": Mapped("MIN_LR"),
    "initial_grad_clip": Mapped("INITIAL_GRAD_CLIP"),
    "log_tboard_every": Mapped("LOG_TBOARD_EVERY"),
    "val_step_every": Mapped("VAL_STEP_EVERY"),
    "save_step_every": Mapped("SAVE_STEP_EVERY"),
    "l1_weight_target": Mapped("L1_WEIGHT"),
    "ms_weight_target": Mapped("MS_WEIGHT"),
    "grad_weight_target": Mapped("GRAD_WEIGHT"),
    "perceptual_weight_target": Mapped("PERCEPTUAL_WEIGHT"),
    "n_feats": Mapped("N_FEATS"),
    "n_blocks": Mapped("N_BLOCKS"),
    "batch_size": Mapped("BATCH_SIZE"),
    "num_workers": Mapped("NUM_WORKERS"),
    "accumulation_steps": Mapped("ACCUMULATION_STEPS"),
    "plateau_patience": NoEffect(f"{_PLATEAU} (see ADAPTIVE_PLATEAU_PATIENCE_STEPS)"),
    "plateau_safety_threshold": NoEffect(
        f"{_PLATEAU}; the reset here follows a plateau that outlasts an LR boost "
        "(see ADAPTIVE_RESET_STEPS)"
    ),
    "cooldown_duration": NoEffect(
        "weight moves here are larger and rarer than VSR++'s 0.01 steps, so its pause between "
        "them does not carry over (see ADAPTIVE_WEIGHT_COOLDOWN_STEPS)"
    ),
}


def our_key(key: str) -> str:
    """The key of ours that `key` names: itself, or the one the predecessor's name maps to."""
    entry = PREDECESSOR_KEYS.get(key)
    return entry.key if isinstance(entry, Mapped) else key


def no_effect(key: str) -> str | None:
    """Why a predecessor key does nothing here; None for every other key."""
    entry = PREDECESSOR_KEYS.get(key)
    return entry.why if isinstance(entry, NoEffect) else None


def no_effect_line(key: str, why: str) -> str:
    return f"config key {key} (from VSR++) has no effect here: {why}"


def no_effect_lines(keys: Iterable[Any]) -> list[str]:
    """One line per predecessor key in `keys` that is accepted but does nothing here."""
    lines = []
    for key in keys:
        why = no_effect(key) if isinstance(key, str) else None
        if why is not None:
            lines.append(no_effect_line(key, why))
    return lines
