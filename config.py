"""Config: every setting of a run, with typed defaults, file loading, overrides and validation.

Field names are spelled exactly as users write them in config files (the predecessor's UPPERCASE
keys), so error messages, files and the panel agree. A `Config` is valid by construction:
`__post_init__` checks every field and reports every problem at once.

A Python config file is executed, as the predecessor's was: it can run any code, so load only
files you trust, and share configs as TOML, which is data and never runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import runpy
import stat
import sys
import tomllib
import traceback
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vsr_async.errors import ConfigError, ConfigErrors

AmpMode = Literal["auto", "bf16", "fp16", "off"]
Layout = Literal["auto", "patches", "frames"]


def _f(default: Any, *, lo: float | None = None, hi: float | None = None, live: bool = False):
    """A field with an inclusive range, and whether PATCH /api/config may change it mid-run."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "live": live})


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    # --- model (start-only: a checkpoint only fits the shape it was trained with) -----------
    N_FEATS: int = _f(64, lo=4, hi=1024)
    """Feature channels (F) in every propagation block."""
    N_BLOCKS: int = _f(24, lo=2, hi=512)
    """Residual blocks in total, split evenly between the backward and forward trunk (even)."""
    NUM_FRAMES: int = _f(5, lo=1, hi=31)
    """LR frames (T) per sample; odd, the output is the centre frame."""
    SCALE: int = _f(3, lo=2, hi=4)
    """Upscaling factor: 2, 3 or 4."""

    # --- batch ---------------------------------------------------------------------------------
    BATCH_SIZE: int | Literal["auto"] = _f(4, lo=1, hi=4096)
    """Samples per micro-batch, or "auto": the largest that fits the GPU (see EFFECTIVE_BATCH)."""
    ACCUMULATION_STEPS: int = _f(1, lo=1, hi=1024)
    """Micro-batches per optimizer step (gradient accumulation)."""
    EFFECTIVE_BATCH: int = _f(0, lo=0, hi=65536)
    """Samples per optimizer step when BATCH_SIZE is "auto"; 0 = BATCH_SIZE x ACCUMULATION_STEPS."""
    GT_PATCH_SIZE: int = _f(192, lo=12, hi=4096)
    """GT crop size for the frame-folder layout (the patch layout reads sizes from its files)."""

    # --- learning rate -------------------------------------------------------------------------
    LR_EXPONENT: float = _f(-5.0, lo=-12.0, hi=0.0)
    """Warmup starts at 10**LR_EXPONENT and rises linearly to MAX_LR (predecessor's meaning)."""
    WEIGHT_DECAY: float = _f(1e-3, lo=0.0, hi=1.0, live=True)
    """AdamW weight decay."""
    WARMUP_STEPS: int = _f(1000, lo=0, hi=10**9)
    """Optimizer steps of linear warmup."""
    MAX_LR: float = _f(1e-4, lo=1e-12, hi=1.0, live=True)
    """Peak learning rate, reached at the end of warmup; cosine decay follows."""
    MIN_LR: float = _f(1e-6, lo=0.0, hi=1.0, live=True)
    """Learning rate at MAX_STEPS (end of the cosine)."""

    # --- loss weights (targets; the adaptive system moves the current weights around them) -----
    L1_WEIGHT: float = _f(1.0, lo=0.0, hi=100.0, live=True)
    """Weight of the L1 pixel loss."""
    MS_WEIGHT: float = _f(0.1, lo=0.0, hi=100.0, live=True)
    """Weight of the multi-scale L1 loss (1/2 and 1/4 resolution)."""
    GRAD_WEIGHT: float = _f(0.1, lo=0.0, hi=100.0, live=True)
    """Weight of the image-gradient (edge) L1 loss."""
    PERCEPTUAL_WEIGHT: float = _f(0.0, lo=0.0, hi=100.0)
    """Weight of the VGG perceptual loss; > 0 needs PERCEPTUAL_WEIGHTS_PATH."""
    PERCEPTUAL_WEIGHTS_PATH: str = ""
    """Local file with VGG16 weights (torchvision state_dict layout); nothing is downloaded."""

    # --- cadence -------------------------------------------------------------------------------
    MAX_STEPS: int = _f(100_000, lo=1, hi=10**10)
    """Optimizer steps of the whole run."""
    VAL_STEP_EVERY: int = _f(500, lo=1, hi=10**10, live=True)
    """Validate, then write Statistik_<step>.json, every this many optimizer steps."""
    SAVE_STEP_EVERY: int = _f(10_000, lo=1, hi=10**10, live=True)
    """Save a checkpoint every this many optimizer steps."""
    LOG_TBOARD_EVERY: int = _f(100, lo=1, hi=10**10, live=True)
    """Read losses off the device and log them every this many steps (the only sync cadence)."""
    HIST_STEP_EVERY: int = _f(500, lo=1, hi=10**10, live=True)
    """Write weight histograms to TensorBoard every this many steps."""
    KEEP_CHECKPOINTS: int = _f(3, lo=1, hi=1000, live=True)
    """Newest checkpoints kept, besides the best one."""

    # --- data ----------------------------------------------------------------------------------
    DATA_ROOT: str = "Learn"
    """Run ("Learn") directory: Statistik files, checkpoints, TensorBoard, training.log."""
    DATASET_ROOT: str = ""
    """Dataset directory (patch or frame-folder layout); never written to."""
    DATASET_LAYOUT: Layout = "auto"
    """"patches" (Patches/GT, Patches/LR, Val/...), "frames" (GT/<clip>/...) or "auto"."""
    VAL_MAX_IMAGES: int = _f(0, lo=0, hi=10**6)
    """Validate on at most this many images (0 = all)."""
    NUM_WORKERS: int = _f(2, lo=0, hi=256)
    """Data-loader worker processes (0 = load on the GPU thread)."""
    PIN_MEMORY: bool = True
    """Pin host batches for non-blocking copies to the GPU (ignored on the CPU)."""

    # --- adaptive system -----------------------------------------------------------------------
    ADAPTIVE_LOSS_WEIGHTS: bool = True
    """Let the adaptive system move loss weights around their targets."""
    ADAPTIVE_GRAD_CLIP: bool = True
    """Derive the gradient clip from recent gradient norms."""
    INITIAL_GRAD_CLIP: float = _f(1.5, lo=1e-6, hi=1e6, live=True)
    """Gradient-norm clip (the starting value when ADAPTIVE_GRAD_CLIP is on)."""
    ADAPTIVE_SETTLING_STEPS: int = _f(500, lo=0, hi=10**9, live=True)
    """Steps after warmup in mode Settling: no weight moves, no plateau decisions yet."""
    ADAPTIVE_RESUME_SETTLING_STEPS: int = _f(200, lo=0, hi=10**9, live=True)
    """Settling steps after a resume or a safety reset (0: a resume continues undisturbed)."""
    ADAPTIVE_WINDOW_STEPS: int = _f(500, lo=1, hi=10**9, live=True)
    """Steps over which sharpness is averaged and the perceptual-loss trend is fitted."""
    ADAPTIVE_SHARPNESS_TOLERANCE: float = _f(0.05, lo=0.0, hi=1.0, live=True)
    """Sharpness ratio (output/GT edges) within 1 ± this leaves the weights alone."""
    ADAPTIVE_WEIGHT_MAX_STEP: float = _f(0.1, lo=0.0, hi=1.0, live=True)
    """Largest change of a weight per decision, as a fraction of its target."""
    ADAPTIVE_WEIGHT_COOLDOWN_STEPS: int = _f(1000, lo=0, hi=10**9, live=True)
    """Steps after a weight move before the next one (halved in mode Aggressive)."""
    ADAPTIVE_WEIGHT_FLOOR: float = _f(0.25, lo=0.0, hi=1.0, live=True)
    """MS, gradient and perceptual weights never go below this fraction of their target."""
    ADAPTIVE_WEIGHT_CEILING: float = _f(4.0, lo=1.0, hi=100.0, live=True)
    """MS, gradient and perceptual weights never go above this multiple of their target."""
    ADAPTIVE_L1_FLOOR: float = _f(0.5, lo=0.0, hi=1.0, live=True)
    """The L1 weight stays between this fraction of L1_WEIGHT and L1_WEIGHT."""
    ADAPTIVE_PLATEAU_THRESHOLD: float = _f(0.002, lo=0.0, hi=1.0, live=True)
    """Relative drop of the smoothed training loss below its best that counts as progress."""
    ADAPTIVE_PLATEAU_PATIENCE_STEPS: int = _f(3000, lo=1, hi=10**9, live=True)
    """Steps without progress on the smoothed loss before a plateau is declared."""
    ADAPTIVE_QUALITY_MIN_GAIN: float = _f(1e-4, lo=0.0, hi=1.0, live=True)
    """Gain over the best validation quality (fraction 0–1) that counts as a new best."""
    ADAPTIVE_QUALITY_PATIENCE: int = _f(3, lo=1, hi=10**6, live=True)
    """Validations in a row without a new best quality before a plateau is declared."""
    ADAPTIVE_LR_BOOST_FACTOR: float = _f(3.0, lo=1.0, hi=100.0, live=True)
    """Learning-rate multiplier on a plateau (capped at MAX_LR); 1 turns boosts off."""
    ADAPTIVE_LR_BOOST_STEPS: int = _f(500, lo=1, hi=10**9, live=True)
    """Steps an LR boost lasts."""
    ADAPTIVE_LR_BOOST_COOLDOWN_STEPS: int = _f(5000, lo=0, hi=10**9, live=True)
    """Steps after a boost ends before another boost is available."""
    ADAPTIVE_RESET_STEPS: int = _f(20_000, lo=1, hi=10**10, live=True)
    """A plateau that lasts this many steps after an LR boost resets weights and clip."""
    ADAPTIVE_CLIP_PERCENTILE: float = _f(95.0, lo=50.0, hi=100.0, live=True)
    """Percentile of recent gradient norms that the adaptive clip follows."""
    ADAPTIVE_CLIP_MARGIN: float = _f(1.5, lo=1.0, hi=100.0, live=True)
    """Adaptive clip = percentile x this margin."""
    ADAPTIVE_CLIP_MIN: float = _f(1e-3, lo=1e-6, hi=1.0, live=True)
    """Lower bound of the adaptive clip."""
    ADAPTIVE_CLIP_MAX: float = _f(100.0, lo=1.0, hi=1e6, live=True)
    """Upper bound of the adaptive clip."""
    ADAPTIVE_CLIP_HISTORY: int = _f(1000, lo=32, hi=10**6, live=True)
    """Recent steps whose gradient norms the adaptive clip is computed from."""

    # --- precision and speed -------------------------------------------------------------------
    AMP: AmpMode = "auto"
    """Autocast: "auto" picks by device capability; "bf16", "fp16" (with grad scaler) or "off"."""
    CHANNELS_LAST: bool = True
    """Use channels_last memory format on CUDA (faster convolutions on tensor cores)."""
    GRADIENT_CHECKPOINTING: bool = False
    """Recompute the propagation trunks in backward to save memory."""
    COMPILE: bool = False
    """torch.compile the model (slow first steps, faster later)."""
    EMA_DECAY: float = _f(0.0, lo=0.0, hi=0.999999)
    """Decay of the EMA weights used for validation; 0 = off."""
    NAN_LIMIT: int = _f(10, lo=1, hi=10**6)
    """Stop (with a checkpoint) after this many consecutive non-finite losses."""
    SEED: int = _f(0, lo=0, hi=2**63 - 1)
    """Seed for model init, sampling and augmentation."""
    DEVICE: str = "auto"
    """"auto" (CUDA if present), "cpu", "cuda" or "cuda:N"."""

    # --- web panel -----------------------------------------------------------------------------
    WEB_ENABLED: bool = True
    """Serve the web panel and REST API (--no-web turns it off)."""
    WEB_HOST: str = "127.0.0.1"
    """Bind address; anything but loopback requires a bearer token on every request."""
    WEB_PORT: int = _f(5050, lo=0, hi=65535)
    """Panel port (0 = any free port, printed at start)."""
    WEB_TOKEN: str = field(default="", metadata={"secret": True})
    """Bearer token; empty = generated and printed once when the host is not loopback. Secret:
    never stored in checkpoints, Statistik files, logs or TensorBoard."""
    WEB_MAX_CONNECTIONS: int = _f(0, lo=0, hi=65536)
    """Connections the panel keeps open at once (event streams included); one more gets a 503
    and is closed. 0 = a quarter of the process's file-descriptor limit, at most 256."""
    WEB_IDLE_TIMEOUT_S: float = _f(10.0, lo=0.1, hi=3600.0)
    """Seconds a connection may go without sending a complete request head, after connecting
    and between requests; then it is closed. Requests being answered (event streams) are not."""
    KEYBOARD_ENABLED: bool = True
    """Read keys from stdin when it is a terminal (--no-keyboard turns it off)."""

    def __post_init__(self) -> None:
        errors = _check_types_and_ranges(self)
        errors += _check_relations(self, {e.key for e in errors})
        if errors:
            raise ConfigErrors(errors) if len(errors) > 1 else errors[0]

    def replace(self, changes: Mapping[str, Any]) -> Config:
        """A validated copy with `changes` applied; values may be strings (from --set)."""
        return build_config(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """Every value, secrets included: for building configs, never for storing or showing."""
        return {name: getattr(self, name) for name in field_names()}

    def public_dict(self) -> dict[str, Any]:
        """Every value but the secrets: what checkpoints, files, logs and panels may hold."""
        hidden = secret_keys()
        return {name: getattr(self, name) for name in field_names() if name not in hidden}


# Keys of the predecessor's config files that were renamed; value converters keep old files loading.
LEGACY_KEYS: dict[str, tuple[str, typing.Callable[[Any], Any]]] = {
    "USE_AMP": ("AMP", lambda v: "auto" if v else "off"),
    "USE_CHECKPOINTING": ("GRADIENT_CHECKPOINTING", bool),
}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def secret_keys() -> frozenset[str]:
    """Credentials (field metadata `secret`): kept out of every file, log and panel; never live,
    so no live-config record (runtime_config.json, Config/Changes, config_live) holds one."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.metadata.get("secret"))


def live_keys() -> frozenset[str]:
    """Keys that PATCH /api/config may change during a run; the rest apply only at start."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.metadata.get("live"))


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def describe_type(tp: Any) -> str:
    """The allowed values of a field type, as the user reads them in an error."""
    if tp is bool:
        return "true or false"
    if tp in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    return str(tp)


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def _value_fits(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp) and type(value) in {
            type(a) for a in typing.get_args(tp)
        }
    if origin in (typing.Union, types.UnionType):
        return any(_value_fits(value, a) for a in typing.get_args(tp))
    return isinstance(value, tp)


def _check_types_and_ranges(config: Config) -> list[ConfigError]:
    errors = []
    hints = _hints()
    for f in dataclasses.fields(Config):
        value, tp = getattr(config, f.name), hints[f.name]
        if not _value_fits(value, tp):
            shown = f"a {type(value).__name__}" if f.metadata.get("secret") else repr(value)
            errors.append(ConfigError(f.name, f"must be {describe_type(tp)}, got {shown}"))
            continue
        if isinstance(value, str) and "\x00" in value:  # no OS call takes it; Path raises
            errors.append(ConfigError(f.name, "must not contain a NUL byte (\\x00)"))
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                errors.append(ConfigError(f.name, f"must be a finite number, got {value!r}"))
                continue
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errors.append(
                    ConfigError(f.name, f"must be {_range_text(f.metadata)}, got {value!r}")
                )
    return errors


def _check_relations(c: Config, failed: set[str]) -> list[ConfigError]:
    """Rules beyond one field's type and range; a rule is skipped if a key it reads is bad."""
    errors = []
    perceptual_on = lambda: c.PERCEPTUAL_WEIGHT > 0  # noqa: E731
    rules: list[tuple[tuple[str, ...], typing.Callable[[], bool], typing.Callable[[], str]]] = [
        (
            ("N_BLOCKS",),
            lambda: c.N_BLOCKS % 2 == 1,
            lambda: f"must be even (split between two trunks), got {c.N_BLOCKS}",
        ),
        (
            ("NUM_FRAMES",),
            lambda: c.NUM_FRAMES % 2 == 0,
            lambda: f"must be odd (the centre frame is restored), got {c.NUM_FRAMES}",
        ),
        (
            ("GT_PATCH_SIZE", "SCALE"),
            lambda: c.GT_PATCH_SIZE % c.SCALE != 0,
            lambda: f"must be a multiple of SCALE={c.SCALE}, got {c.GT_PATCH_SIZE}",
        ),
        (
            ("MIN_LR", "MAX_LR"),
            lambda: c.MIN_LR > c.MAX_LR,
            lambda: f"must be <= MAX_LR={c.MAX_LR:g}, got {c.MIN_LR:g}",
        ),
        (
            ("EFFECTIVE_BATCH", "BATCH_SIZE"),
            lambda: c.BATCH_SIZE == "auto" and c.EFFECTIVE_BATCH == 0,
            lambda: 'must be set (>= 1) when BATCH_SIZE is "auto"',
        ),
        (
            ("PERCEPTUAL_WEIGHTS_PATH", "PERCEPTUAL_WEIGHT"),
            lambda: perceptual_on() and not c.PERCEPTUAL_WEIGHTS_PATH,
            lambda: (
                "must name a local VGG16 weights file when PERCEPTUAL_WEIGHT > 0 (nothing "
                "can be downloaded; set PERCEPTUAL_WEIGHT=0 to turn the loss off)"
            ),
        ),
        (
            ("PERCEPTUAL_WEIGHTS_PATH", "PERCEPTUAL_WEIGHT"),
            lambda: (
                perceptual_on()
                and bool(c.PERCEPTUAL_WEIGHTS_PATH)
                and not Path(c.PERCEPTUAL_WEIGHTS_PATH).is_file()
            ),
            lambda: f"no such file: {c.PERCEPTUAL_WEIGHTS_PATH}",
        ),
        (
            ("DEVICE",),
            lambda: not _device_ok(c.DEVICE),
            lambda: f'must be "auto", "cpu", "cuda" or "cuda:N", got {c.DEVICE!r}',
        ),
        (("WEB_HOST",), lambda: not c.WEB_HOST.strip(), lambda: "must not be empty"),
        (
            ("WEB_HOST",),
            lambda: not _host_ok(c.WEB_HOST),
            lambda: f"is not a host name or IP address, got {c.WEB_HOST!r}",
        ),
    ]
    for keys, broken, message in rules:
        if not failed.intersection(keys) and broken():
            errors.append(ConfigError(keys[0], message()))
    return errors


def _host_ok(host: str) -> bool:
    """An IP address, or a name the resolver can encode (no empty or over-long labels)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        host.encode("idna")  # what getaddrinfo does first; "a..b" fails here with a traceback
    except UnicodeError:
        return False
    return True


def _device_ok(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


# --- building a Config from raw values ---------------------------------------------------------


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key.upper(), field_names() + list(LEGACY_KEYS), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _convert_string(key: str, text: str, tp: Any) -> Any:
    """Turn a --set value (always a string) into the field's type, or raise naming the key."""
    text = text.strip()
    if tp is str:
        return text
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(key, f"must be true or false, got {text!r}")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise ConfigError(key, f"must be an integer, got {text!r}") from None
            if as_float.is_integer():
                return int(as_float)
            raise ConfigError(key, f"must be an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {text!r}") from None
    origin = typing.get_origin(tp)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if str(choice).lower() == text.lower():
                return choice
        raise ConfigError(key, f"must be {describe_type(tp)}, got {text!r}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert_string(key, text, option)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {describe_type(tp)}, got {text!r}")
    raise ConfigError(key, f"cannot be set from text (type {tp})")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """File values keep their type, except that an integer is accepted where a number is asked."""
    if isinstance(value, str) and tp is not str and not _value_fits(value, tp):
        return _convert_string(key, value, tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build_config(values: Mapping[str, Any], *, base: Config | None = None) -> Config:
    """Validate raw key → value pairs (from a file, --set or PATCH) on top of `base`.

    Unknown keys get a "did you mean"; every problem is reported in one error.
    """
    hints = _hints()
    errors: list[ConfigError] = []
    clean: dict[str, Any] = {}
    for raw_key, value in values.items():
        if not isinstance(raw_key, str):
            errors.append(ConfigError(repr(raw_key), "config keys must be strings like 'N_FEATS'"))
            continue
        key = raw_key
        if key in LEGACY_KEYS:
            key, convert = LEGACY_KEYS[key]
            value = convert(value)
        if key not in hints:
            errors.append(ConfigError(raw_key, f"unknown key{_suggest(raw_key)}"))
            continue
        try:
            clean[key] = _coerce(key, value, hints[key])
        except ConfigError as exc:
            errors.append(exc)
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


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """`--set KEY=VALUE` arguments → {KEY: "VALUE"} (converted later, by the field's type)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("", f"--set expects KEY=VALUE, got {pair!r}")
        result[key.strip()] = value
    return result


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Raw values from a TOML file or a Python file of UPPERCASE constants.

    A Python file is executed, as the predecessor's were, so it runs whatever its author wrote;
    TOML is plain data, the safe choice for configs shared with others. A Python file may define
    `get_config()` returning a dict (the predecessor's format); then that dict is the config.
    Otherwise its UPPERCASE module-level names are. Every failure, the file's own code included
    (an exception, `sys.exit()`), is one ConfigError naming the file.
    """
    path = Path(path)
    if "\x00" in str(path):
        raise ConfigError("", f"config file path {str(path)!r} contains a NUL byte")
    source = _read_config_file(path)
    if path.suffix == ".toml":
        return _parse_toml(path, source)
    if path.suffix != ".py":
        raise ConfigError("", f"config file {path}: must end in .py or .toml")
    return _run_python_config(path)


def _read_config_file(path: Path) -> bytes:
    """The file's bytes; a missing, unreadable or not-a-file path is one error naming it."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("", f"config file {path}: is a directory, not a file")
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
            raise ConfigError("", f"config file {path}: is not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError("", f"config file {path}: cannot be read: {reason}") from None


def _parse_toml(path: Path, source: bytes) -> dict[str, Any]:
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "",
            f"config file {path}: not valid TOML: not UTF-8 text "
            f"(byte 0x{source[exc.start]:02x} at offset {exc.start})",
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {path}: not valid TOML: {exc}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                key,
                f"config file {path}: tables are not supported; write plain KEY = value lines",
            )
    return data


def _run_python_config(path: Path) -> dict[str, Any]:
    """Execute the file in its own namespace; its get_config() dict, or its UPPERCASE names."""
    with _config_code_errors(path):
        namespace = runpy.run_path(str(path), run_name="vsr_async_config")
        get_config = namespace.get("get_config")
        if not callable(get_config):
            return {
                k: v
                for k, v in namespace.items()
                if k.isupper() and not k.startswith("_") and not isinstance(v, types.ModuleType)
            }
        values = get_config()
        values = dict(values) if isinstance(values, Mapping) else values
    if not isinstance(values, dict):
        raise ConfigError(
            "",
            f"config file {path}: get_config() must return a dict, got {type(values).__name__}",
        )
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(
                "",
                f"config file {path}: get_config() returned the key {key!r}; "
                "keys must be strings like 'N_FEATS'",
            )
    return values


@contextlib.contextmanager
def _config_code_errors(path: Path) -> Iterator[None]:
    """Around the config file's own code: what it raises becomes one line naming the file.

    `sys.exit()` is caught too (it would end the process silently with the file's exit code);
    Ctrl+C (KeyboardInterrupt) is left alone.
    """
    try:
        yield
    except SystemExit as exc:
        raise ConfigError(
            "", f"config file {path} called sys.exit({exc.code!r}) while being loaded"
        ) from None
    except Exception as exc:  # the user's code: any error is theirs to fix
        line = _line_in_file(path, exc)
        where = f" failed at line {line}" if line else " failed"
        raise ConfigError("", f"config file {path}{where}: {_exception_text(exc)}") from None


def _line_in_file(path: Path, exc: Exception) -> int | None:
    """The line of `path` where `exc` arose (the innermost frame in that file)."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return frames[-1].lineno if frames else None


def _exception_text(exc: Exception) -> str:
    """`Type: message` on one line (a SyntaxError without its own "(file, line N)" suffix)."""
    message = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    message = " ".join(message.split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """The config of a run: defaults, then the file, then --set overrides, validated once."""
    values: dict[str, Any] = load_config_file(path) if path is not None else {}
    values.update(parse_overrides(overrides))
    return build_config(values)


if __name__ == "__main__":  # `python config.py FILE` prints the resolved config
    for key, value in load_config(sys.argv[1] if len(sys.argv) > 1 else None).public_dict().items():
        print(f"{key} = {value!r}")
