"""Config: the predecessor's file format, TOML, --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsr_async.errors import ConfigError, ConfigErrors
from vsr_async.settings import Config, build_config, live_keys, load_config, load_config_file

# A config in the predecessor's format: UPPERCASE constants, comments, a get_config() that
# returns a dict (adding USE_AMP only when it is on), and a print helper that must not run.
OLD_FORMAT = '''"""Tesla P4 configuration (predecessor format)."""

# MODEL
N_FEATS = 64
N_BLOCKS = 24

# BATCH
BATCH_SIZE = 4
ACCUMULATION_STEPS = 4

# LEARNING RATE
LR_EXPONENT = -5
WEIGHT_DECAY = 0.001
WARMUP_STEPS = 1000
MAX_LR = 1e-4
MIN_LR = 1e-6

# LOSS
L1_WEIGHT = 1.0
MS_WEIGHT = 0.0
GRAD_WEIGHT = 0.0
PERCEPTUAL_WEIGHT = 0.0

# SCHEDULE
MAX_STEPS = 100000
VAL_STEP_EVERY = 500
SAVE_STEP_EVERY = 10000
LOG_TBOARD_EVERY = 100
HIST_STEP_EVERY = 500

# DATA
NUM_WORKERS = 4
PIN_MEMORY = True
DATA_ROOT = "/mnt/data/training/Universal/Mastermodell/Learn"
DATASET_ROOT = "/mnt/data/training/Dataset/Universal/Mastermodell"

# ADAPTIVE
ADAPTIVE_LOSS_WEIGHTS = True
ADAPTIVE_GRAD_CLIP = True
INITIAL_GRAD_CLIP = 1.5

USE_AMP = True


def get_config():
    config = {
        "N_FEATS": N_FEATS, "N_BLOCKS": N_BLOCKS,
        "BATCH_SIZE": BATCH_SIZE, "ACCUMULATION_STEPS": ACCUMULATION_STEPS,
        "LR_EXPONENT": LR_EXPONENT, "WEIGHT_DECAY": WEIGHT_DECAY,
        "WARMUP_STEPS": WARMUP_STEPS, "MAX_LR": MAX_LR, "MIN_LR": MIN_LR,
        "L1_WEIGHT": L1_WEIGHT, "MS_WEIGHT": MS_WEIGHT, "GRAD_WEIGHT": GRAD_WEIGHT,
        "PERCEPTUAL_WEIGHT": PERCEPTUAL_WEIGHT,
        "MAX_STEPS": MAX_STEPS, "VAL_STEP_EVERY": VAL_STEP_EVERY,
        "SAVE_STEP_EVERY": SAVE_STEP_EVERY, "LOG_TBOARD_EVERY": LOG_TBOARD_EVERY,
        "HIST_STEP_EVERY": HIST_STEP_EVERY,
        "NUM_WORKERS": NUM_WORKERS, "PIN_MEMORY": PIN_MEMORY,
        "DATA_ROOT": DATA_ROOT, "DATASET_ROOT": DATASET_ROOT,
        "ADAPTIVE_LOSS_WEIGHTS": ADAPTIVE_LOSS_WEIGHTS,
        "ADAPTIVE_GRAD_CLIP": ADAPTIVE_GRAD_CLIP, "INITIAL_GRAD_CLIP": INITIAL_GRAD_CLIP,
    }
    if USE_AMP:
        config["USE_AMP"] = USE_AMP
    return config


def print_config():
    raise AssertionError("loading a config must not call print_config")


if __name__ == "__main__":
    print_config()
'''


def test_old_format_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.py"
    path.write_text(OLD_FORMAT)
    config = load_config(path)
    assert (config.N_FEATS, config.N_BLOCKS, config.BATCH_SIZE) == (64, 24, 4)
    assert config.ACCUMULATION_STEPS == 4
    assert config.LR_EXPONENT == -5.0 and isinstance(config.LR_EXPONENT, float)
    assert config.DATA_ROOT.endswith("/Learn")
    assert config.AMP == "auto"  # USE_AMP=True: precision chosen by the card


def test_old_format_without_get_config_uses_uppercase_names(tmp_path: Path) -> None:
    source = OLD_FORMAT.split("def get_config")[0] + "import os\nhelper = 3\n"
    path = tmp_path / "config.py"
    path.write_text(source)
    config = load_config(path)
    assert config.N_FEATS == 64 and config.AMP == "auto"


def test_use_amp_false_means_fp32(tmp_path: Path) -> None:
    path = tmp_path / "config.py"
    path.write_text("USE_AMP = False\nUSE_CHECKPOINTING = True\n")
    config = load_config(path)
    assert config.AMP == "off" and config.GRADIENT_CHECKPOINTING is True


def test_toml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('N_FEATS = 32\nDATASET_ROOT = "data"\nPIN_MEMORY = false\nMAX_LR = 2e-4\n')
    config = load_config(path, ["N_FEATS=48", "BATCH_SIZE=auto", "EFFECTIVE_BATCH=8", "AMP=BF16"])
    assert config.N_FEATS == 48  # --set wins over the file
    assert config.BATCH_SIZE == "auto" and config.EFFECTIVE_BATCH == 8
    assert config.AMP == "bf16"
    assert config.PIN_MEMORY is False and config.MAX_LR == 2e-4


@pytest.mark.parametrize(
    ("values", "key", "fragment"),
    [
        ({"N_FEAT": 3}, "N_FEAT", 'did you mean "N_FEATS"'),
        ({"val_step_evry": 3}, "val_step_evry", 'did you mean "VAL_STEP_EVERY"'),
        ({"N_FEATS": "many"}, "N_FEATS", "must be an integer, got 'many'"),
        ({"VAL_STEP_EVERY": 0}, "VAL_STEP_EVERY", "must be in [1, 1e+10], got 0"),
        ({"MAX_LR": 2.0}, "MAX_LR", "must be in [1e-12, 1], got 2.0"),
        ({"AMP": "fp8"}, "AMP", "must be one of 'auto', 'bf16', 'fp16', 'off'"),
        ({"PIN_MEMORY": "maybe"}, "PIN_MEMORY", "must be true or false"),
        ({"SCALE": 5}, "SCALE", "must be in [2, 4], got 5"),
        ({"N_BLOCKS": 5}, "N_BLOCKS", "must be even"),
        ({"NUM_FRAMES": 4}, "NUM_FRAMES", "must be odd"),
        ({"GT_PATCH_SIZE": 100}, "GT_PATCH_SIZE", "multiple of SCALE=3"),
        ({"MIN_LR": 1e-3}, "MIN_LR", "must be <= MAX_LR"),
        ({"DEVICE": "tpu"}, "DEVICE", "must be"),
        (
            {"PERCEPTUAL_WEIGHT": 0.1, "PERCEPTUAL_WEIGHTS_PATH": "/nonexistent/vgg16.pth"},
            "PERCEPTUAL_WEIGHTS_PATH",
            "no such file: /nonexistent/vgg16.pth",
        ),
    ],
)
def test_errors_name_the_key(values: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert info.value.key == key
    assert key in str(info.value) and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigErrors) as info:
        build_config({"N_FEATS": 0, "NUM_FRAMES": 4, "TYPO_KEY": 1})
    message = str(info.value)
    for key in ("N_FEATS", "NUM_FRAMES", "TYPO_KEY"):
        assert key in message
    assert len(info.value.errors) == 3


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_file(tmp_path / "missing.py")
    broken = tmp_path / "broken.toml"
    broken.write_text("N_FEATS = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(broken)
    crashing = tmp_path / "crash.py"
    crashing.write_text("N_FEATS = 1 / 0\n")
    with pytest.raises(ConfigError, match="ZeroDivisionError"):
        load_config_file(crashing)
    with pytest.raises(ConfigError, match=r"--set expects KEY=VALUE"):
        load_config(None, ["N_FEATS"])


def test_replace_validates_and_live_keys_are_runtime_safe() -> None:
    config = Config()
    assert config.replace({"MAX_LR": "3e-4"}).MAX_LR == 3e-4
    with pytest.raises(ConfigError, match="MAX_LR"):
        config.replace({"MAX_LR": -1})
    assert {"MAX_LR", "MIN_LR", "VAL_STEP_EVERY", "L1_WEIGHT"} <= live_keys()
    assert not {"N_FEATS", "SCALE", "NUM_FRAMES", "DATASET_ROOT", "AMP"} & live_keys()


def test_python_config_code_cannot_end_or_crash_the_process(tmp_path: Path) -> None:
    """sys.exit() and exceptions in a config (at load or in get_config) become one ConfigError."""
    cases = {
        "exit.py": ("import sys\nsys.exit(3)\n", "called sys.exit(3) while being loaded"),
        "quit.py": ("def get_config():\n    exit()\n", "called sys.exit(None) while being loaded"),
        "raise.py": ("def get_config():\n    return {}[0]\n", "failed at line 2: KeyError: 0"),
        "multi.py": ("raise ValueError('a\\n  b')\n", "failed at line 1: ValueError: a b"),
        "bare.py": ("raise RuntimeError\n", "failed at line 1: RuntimeError"),
    }
    for name, (source, fragment) in cases.items():
        path = tmp_path / name
        path.write_text(source)
        with pytest.raises(ConfigError) as info:
            load_config_file(path)
        assert str(path) in str(info.value) and fragment in str(info.value)
        assert "\n" not in str(info.value)


def test_get_config_result_must_be_a_dict_of_names(tmp_path: Path) -> None:
    path = tmp_path / "keys.py"
    path.write_text("def get_config():\n    return {'N_FEATS': 8, ('N', 'BLOCKS'): 2}\n")
    with pytest.raises(ConfigError, match=r"returned the key \('N', 'BLOCKS'\)"):
        load_config_file(path)
    with pytest.raises(ConfigError) as info:  # the same rule for values given from code
        build_config({3: 1})
    assert info.value.key == "3" and "must be strings" in str(info.value)


@pytest.mark.parametrize("key", ["DATA_ROOT", "DATASET_ROOT", "PERCEPTUAL_WEIGHTS_PATH", "DEVICE"])
def test_nul_byte_in_a_string_key_names_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({key: "a\0b"})
    assert info.value.key == key and "NUL byte" in str(info.value)
    assert "\0" not in str(info.value)


def test_nul_byte_in_the_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"WEB_TOKEN": "s3cret\0"})
    assert info.value.key == "WEB_TOKEN" and "s3cret" not in str(info.value)


def test_config_file_paths_that_are_not_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config_file(tmp_path)
    with pytest.raises(ConfigError, match="contains a NUL byte"):
        load_config_file(tmp_path / "a\0.toml")
    (tmp_path / "loop.py").symlink_to(tmp_path / "loop.py")
    with pytest.raises(ConfigError, match=r"loop\.py: cannot be read: Too many levels"):
        load_config_file(tmp_path / "loop.py")


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("::", True),
        ("0.0.0.0", True),
        ("localhost", True),
        ("gpu-box.example.org", True),
        ("not..a..host", False),
        ("x" * 64 + ".example", False),  # a DNS label is at most 63 bytes
    ],
)
def test_web_host_must_be_a_name_or_address(host: str, ok: bool) -> None:
    if ok:
        config = build_config({"WEB_HOST": host})
        assert host == config.WEB_HOST
    else:
        with pytest.raises(ConfigError, match="WEB_HOST: is not a host name or IP address"):
            build_config({"WEB_HOST": host})
