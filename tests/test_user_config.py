"""The user's config.py: the repository's file holds every key at its default, `train` and
`check` read ./config.py when no --config is given, and nothing in the user's folder (their
config.py, a web/ folder) shadows the package's own modules."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO, TINY_SETTINGS, run_cli, write_patch_dataset

from vsr_async.settings import Config, field_names, load_config_file, secret_keys
from vsr_async.settings.describe import SECTIONS, config_file_text

REGENERATE = "rm config.py && python -m vsr_async config --write config.py"


def test_repository_config_py_is_every_key_at_its_default() -> None:
    values = load_config_file(REPO / "config.py")
    assert list(values) == field_names()  # complete, nothing extra, in schema order
    assert values == Config().to_dict()  # every value is the default
    assert all(values[key] == "" for key in secret_keys())  # no credential in the repository


def test_repository_config_py_is_the_generated_file() -> None:
    """Its comments are the schema's docs and ranges; after a schema change, regenerate it."""
    text = (REPO / "config.py").read_text(encoding="utf-8")
    assert text == config_file_text(), f"config.py is out of date: {REGENERATE}"
    assert set(SECTIONS) <= set(field_names())


# A predecessor-style config file: UPPERCASE constants, comments, an old key (USE_AMP), a helper
# that must not run. Imported as a module, it would break `from config import Config`.
OLD_STYLE = """# Tesla P4 configuration (predecessor format)
N_FEATS = {N_FEATS}
N_BLOCKS = {N_BLOCKS}
NUM_FRAMES = {NUM_FRAMES}
SCALE = {SCALE}
BATCH_SIZE = {BATCH_SIZE}
NUM_WORKERS = 0
WARMUP_STEPS = 2
MAX_STEPS = 4
VAL_STEP_EVERY = 2
LOG_TBOARD_EVERY = 1
DATA_ROOT = "Learn"
DATASET_ROOT = {dataset!r}
DATASET_LAYOUT = "patches"
USE_AMP = False
WEB_PORT = 0
KEYBOARD_ENABLED = False


def print_config():
    raise AssertionError("loading a config must not call print_config")
"""


def user_folder(tmp_path: Path) -> Path:
    """A fresh working folder with an old-style config.py and a web/ package that must not load."""
    dataset = write_patch_dataset(tmp_path / "dataset", train=6)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "config.py").write_text(OLD_STYLE.format(dataset=str(dataset), **TINY_SETTINGS))
    (folder / "web").mkdir()
    (folder / "web" / "__init__.py").write_text(
        'raise ImportError("the user\'s own web/ folder was imported")\n'
    )
    return folder


def test_cli_in_a_folder_with_an_old_config_py_and_a_web_folder(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)

    result = run_cli("--help", cwd=folder)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    result = run_cli("train", "--help", cwd=folder)
    assert result.returncode == 0 and "./config.py" in result.stdout, result.stderr

    result = run_cli("check", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "config file: ./config.py" in result.stdout and "config: ok" in result.stdout

    result = run_cli("train", cwd=folder)  # with the web panel (port 0), so `web` is imported
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"web panel: http://127\.0\.0\.1:\d+", result.stderr), result.stderr
    learn = folder / "Learn"
    assert sorted(p.name for p in learn.glob("Statistik_*.json")) == [
        "Statistik_2.json",
        "Statistik_4.json",
    ]
    log = (learn / "training.log").read_text(encoding="utf-8")
    assert "config file: ./config.py" in log and "(no --config given)" in log


def test_train_without_config_py_says_what_to_do(tmp_path: Path) -> None:
    for args in (["train", "--no-web"], ["check"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vsr_async: error: option --config:")
        assert "no config.py in" in lines[0]
        assert "python -m vsr_async config --write config.py" in lines[0]
    assert not (tmp_path / "Learn").exists()
