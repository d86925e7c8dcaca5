"""The schema of a run's configuration: `Config`, every key with its type, default, range and
one-line doc (field metadata), and `build_config`, which turns raw key → value pairs into a
validated `Config`.

Field names are spelled exactly as users write them in config files (the predecessor's UPPERCASE
keys), so error messages, files and the panel agree. A `Config` is valid by construction:
`__post_init__` checks every field and reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vsr_async.errors import ConfigError, ConfigErrors
from vsr_async.settings.checks import check_config
from vsr_async.settings.predecessor_keys import PREDECESSOR_KEYS, Mapped, NoEffect
from vsr_async.settings.run_keys import RunKeys
from vsr_async.settings.values import coerce, key

AmpMode = Literal["auto", "bf16", "fp16", "off"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Config(RunKeys):
    """Every setting of a run; valid by construction (see the module docstring)."""

    # --- adaptive system -----------------------------------------------------------------------
    ADAPTIVE_LOSS_WEIGHTS: bool = key(
        True, "Let the adaptive system move loss weights around their targets."
    )
    ADAPTIVE_GRAD_CLIP: bool = key(True, "Derive the gradient clip from recent gradient norms.")
    INITIAL_GRAD_CLIP: float = key(
        1.5,
        "Gradient-norm clip (the starting value when ADAPTIVE_GRAD_CLIP is on).",
        lo=1e-6,
        hi=1e6,
        live=True,
    )
    ADAPTIVE_SETTLING_STEPS: int = key(
        500,
        "Steps after warmup in mode Settling: no weight moves, no plateau decisions yet.",
        lo=0,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_RESUME_SETTLING_STEPS: int = key(
        200,
        "Settling steps after a resume or a safety reset (0: a resume continues undisturbed).",
        lo=0,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_WINDOW_STEPS: int = key(
        500,
        "Steps over which sharpness is averaged and the perceptual-loss trend is fitted.",
        lo=1,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_SHARPNESS_TOLERANCE: float = key(
        0.05,
        "Sharpness ratio (output/GT edges) within 1 ± this leaves the weights alone.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_WEIGHT_MAX_STEP: float = key(
        0.1,
        "Largest change of a weight per decision, as a fraction of its target.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_WEIGHT_COOLDOWN_STEPS: int = key(
        1000,
        "Steps after a weight move before the next one (halved in mode Aggressive).",
        lo=0,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_WEIGHT_FLOOR: float = key(
        0.25,
        "MS, gradient and perceptual weights never go below this fraction of their target.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_WEIGHT_CEILING: float = key(
        4.0,
        "MS, gradient and perceptual weights never go above this multiple of their target.",
        lo=1.0,
        hi=100.0,
        live=True,
    )
    ADAPTIVE_L1_FLOOR: float = key(
        0.5,
        "The L1 weight stays between this fraction of L1_WEIGHT and L1_WEIGHT.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_PLATEAU_THRESHOLD: float = key(
        0.002,
        "Relative drop of the smoothed training loss below its best that counts as progress.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_PLATEAU_PATIENCE_STEPS: int = key(
        3000,
        "Steps without progress on the smoothed loss before a plateau is declared.",
        lo=1,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_QUALITY_MIN_GAIN: float = key(
        1e-4,
        "Gain over the best validation quality (fraction 0–1) that counts as a new best.",
        lo=0.0,
        hi=1.0,
        live=True,
    )
    ADAPTIVE_QUALITY_PATIENCE: int = key(
        3,
        "Validations in a row without a new best quality before a plateau is declared.",
        lo=1,
        hi=10**6,
        live=True,
    )
    ADAPTIVE_LR_BOOST_FACTOR: float = key(
        3.0,
        "Learning-rate multiplier on a plateau (capped at MAX_LR); 1 turns boosts off.",
        lo=1.0,
        hi=100.0,
        live=True,
    )
    ADAPTIVE_LR_BOOST_STEPS: int = key(500, "Steps an LR boost lasts.", lo=1, hi=10**9, live=True)
    ADAPTIVE_LR_BOOST_COOLDOWN_STEPS: int = key(
        5000,
        "Steps after a boost ends before another boost is available.",
        lo=0,
        hi=10**9,
        live=True,
    )
    ADAPTIVE_RESET_STEPS: int = key(
        20_000,
        "A plateau that lasts this many steps after an LR boost resets weights and clip.",
        lo=1,
        hi=10**10,
        live=True,
    )
    ADAPTIVE_CLIP_PERCENTILE: float = key(
        95.0,
        "Percentile of recent gradient norms that the adaptive clip follows.",
        lo=50.0,
        hi=100.0,
        live=True,
    )
    ADAPTIVE_CLIP_MARGIN: float = key(
        1.5, "Adaptive clip = percentile x this margin.", lo=1.0, hi=100.0, live=True
    )
    ADAPTIVE_CLIP_MIN: float = key(
        1e-3, "Lower bound of the adaptive clip.", lo=1e-6, hi=1.0, live=True
    )
    ADAPTIVE_CLIP_MAX: float = key(
        100.0, "Upper bound of the adaptive clip.", lo=1.0, hi=1e6, live=True
    )
    ADAPTIVE_CLIP_HISTORY: int = key(
        1000,
        "Recent steps whose gradient norms the adaptive clip is computed from.",
        lo=32,
        hi=10**6,
        live=True,
    )

    # --- precision and speed -------------------------------------------------------------------
    AMP: AmpMode = key(
        "auto",
        'Autocast: "auto" picks by device capability; "bf16", "fp16" (with grad scaler) or "off".',
    )
    CHANNELS_LAST: bool = key(
        True, "Use channels_last memory format on CUDA (faster convolutions on tensor cores)."
    )
    GRADIENT_CHECKPOINTING: bool = key(
        False, "Recompute the propagation trunks in backward to save memory."
    )
    COMPILE: bool = key(False, "torch.compile the model (slow first steps, faster later).")
    EMA_DECAY: float = key(
        0.0, "Decay of the EMA weights used for validation; 0 = off.", lo=0.0, hi=0.999999
    )
    NAN_LIMIT: int = key(
        10,
        "Stop (with a checkpoint) after this many consecutive non-finite losses.",
        lo=1,
        hi=10**6,
    )
    SEED: int = key(0, "Seed for model init, sampling and augmentation.", lo=0, hi=2**63 - 1)
    DEVICE: str = key("auto", '"auto" (CUDA if present), "cpu", "cuda" or "cuda:N".')
    DIST_TIMEOUT_S: float = key(
        300.0,
        "Under torchrun: seconds a rank waits for the others in one exchange (start, a step, a "
        "validation) before the job fails instead of hanging.",
        lo=5.0,
        hi=86400.0,
    )

    # --- web panel -----------------------------------------------------------------------------
    WEB_ENABLED: bool = key(True, "Serve the web panel and REST API (--no-web turns it off).")
    WEB_HOST: str = key(
        "127.0.0.1", "Bind address; anything but loopback requires a bearer token on every request."
    )
    WEB_PORT: int = key(5050, "Panel port (0 = any free port, printed at start).", lo=0, hi=65535)
    WEB_TOKEN: str = key(
        "",
        "Bearer token; empty = generated and printed once when the host is not loopback. "
        "Secret: never stored in checkpoints, Statistik files, logs or TensorBoard.",
        secret=True,
    )
    WEB_MAX_CONNECTIONS: int = key(
        0,
        "Connections the panel keeps open at once (event streams included); one more gets a 503 "
        "and is closed. 0 = a quarter of the process's file-descriptor limit, at most 256.",
        lo=0,
        hi=65536,
    )
    WEB_IDLE_TIMEOUT_S: float = key(
        10.0,
        "Seconds a connection may go without sending a complete request head, after connecting "
        "and between requests; then it is closed. Requests being answered (event streams) are not.",
        lo=0.1,
        hi=3600.0,
    )
    TENSORBOARD_ENABLED: bool = key(
        False,
        "Serve TensorBoard (of this run's tensorboard/ folder) from the training process, on "
        "WEB_HOST; the panel links to it (--tensorboard [PORT] turns it on). No token: on a "
        "non-loopback WEB_HOST anyone who reaches the port can read it.",
    )
    TENSORBOARD_PORT: int = key(
        6006, "TensorBoard's port (0 = any free port, printed at start).", lo=0, hi=65535
    )
    KEYBOARD_ENABLED: bool = key(
        True, "Read keys from stdin when it is a terminal (--no-keyboard turns it off)."
    )

    def __post_init__(self) -> None:
        errors = check_config(self)
        if errors:
            raise ConfigErrors(errors) if len(errors) > 1 else errors[0]

    def replace(self, changes: Mapping[str, Any]) -> Config:
        """A validated copy with `changes` applied; values may be strings (from --set)."""
        return build_config(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """Every value, secrets included: for building configs, never for storing or showing."""
        return {name: getattr(self, name) for name in field_names()}

    def without_secrets(self) -> Config:
        """This config with every secret at its default: for another process that needs the
        settings but no credentials (the other ranks of a torchrun job)."""
        fields = dataclasses.fields(Config)
        defaults: dict[str, Any] = {f.name: f.default for f in fields if f.metadata["secret"]}
        return dataclasses.replace(self, **defaults)

    def public_dict(self) -> dict[str, Any]:
        """Every value but the secrets: what checkpoints, files, logs and panels may hold."""
        hidden = secret_keys()
        return {name: getattr(self, name) for name in field_names() if name not in hidden}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def field_docs() -> dict[str, str]:
    """The one-line doc of every key (field metadata `doc`), in schema order."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(Config)}


def secret_keys() -> frozenset[str]:
    """Credentials (field metadata `secret`): kept out of every file, log and panel; never live,
    so no live-config record (runtime_config.json, Config/Changes, config_live) holds one."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.metadata["secret"])


def live_keys() -> frozenset[str]:
    """Keys that PATCH /api/config may change during a run; the rest apply only at start."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.metadata["live"])


@functools.cache
def field_types() -> dict[str, Any]:
    """Each key's type (`Literal[...]`, `int | Literal["auto"]`, ...), resolved once."""
    return typing.get_type_hints(Config)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), field_names() + list(PREDECESSOR_KEYS), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _given_twice(key: str, first: str, second: str, a: Any, b: Any) -> ConfigError:
    """MAX_LR and max_lr (VSR++'s name for it) both given, with different values."""
    names = " and ".join(f"{n}={v!r}" for n, v in ((first, a), (second, b)))
    return ConfigError(key, f"given twice with different values: {names}; keep one")


def build_config(values: Mapping[str, Any], *, base: Config | None = None) -> Config:
    """Validate raw key → value pairs (from a file, --set or PATCH) on top of `base`.

    Unknown keys get a "did you mean"; every problem is reported in one error. The predecessor's
    keys (predecessor_keys.py) are read as the keys of ours they map to, or left out when they
    have no effect here (the caller logs `no_effect_lines` for those).
    """
    hints = field_types()
    errors: list[ConfigError] = []
    clean: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # our key -> the name it was given under
    for raw_key, value in values.items():
        if not isinstance(raw_key, str):
            errors.append(ConfigError(repr(raw_key), "config keys must be strings like 'N_FEATS'"))
            continue
        entry = PREDECESSOR_KEYS.get(raw_key)
        if isinstance(entry, NoEffect):
            continue
        key = entry.key if isinstance(entry, Mapped) else raw_key
        if key not in hints:
            errors.append(ConfigError(raw_key, f"unknown key{_suggest(raw_key)}"))
            continue
        try:
            converted = coerce(key, entry.convert(value) if entry else value, hints[key])
        except ConfigError as exc:
            errors.append(exc)
            continue
        if key in clean and clean[key] != converted:
            errors.append(_given_twice(key, given_as[key], raw_key, clean[key], converted))
            continue
        clean[key], given_as[key] = converted, raw_key
    start = base.to_dict() if base is not None else {}
    try:
        config = Config(**{**start, **clean})
    except ConfigErrors as exc:
        errors += exc.errors
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        raise ConfigErrors(errors) if len(errors) > 1 else errors[0]
    return config
