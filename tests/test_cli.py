"""The command line: one clear line and exit code 1 for every user mistake, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TINY_SETTINGS, run_cli, write_patch_dataset, write_toml


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_patch_dataset(tmp_path / "dataset", train=6)


def config_file(tmp_path: Path, dataset: Path, **overrides) -> Path:
    values = {**TINY_SETTINGS, "DATASET_ROOT": str(dataset), "DATA_ROOT": str(tmp_path / "Learn")}
    return write_toml(tmp_path / "run.toml", {**values, **overrides})


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_check_prints_a_summary(tmp_path: Path, dataset: Path) -> None:
    result = run_cli("check", "--config", str(config_file(tmp_path, dataset)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config: ok" in result.stdout
    assert "patches" in result.stdout and "6" in result.stdout


def test_bad_key_names_the_key(tmp_path: Path, dataset: Path) -> None:
    path = config_file(tmp_path, dataset, N_FEAT=16)
    for args in (["check"], ["train", "--no-web"]):
        result = run_cli(*args, "--config", str(path), cwd=tmp_path)
        assert_one_line_error(result, "N_FEAT", 'did you mean "N_FEATS"')


def test_bad_override_names_the_key_and_range(tmp_path: Path, dataset: Path) -> None:
    path = config_file(tmp_path, dataset)
    result = run_cli("check", "--config", str(path), "--set", "VAL_STEP_EVERY=0", cwd=tmp_path)
    assert_one_line_error(result, "VAL_STEP_EVERY", "must be in [1, 1e+10], got 0")


def test_missing_dataset_folder(tmp_path: Path) -> None:
    path = config_file(tmp_path, tmp_path / "no_such_dataset")
    result = run_cli("train", "--config", str(path), "--no-web", cwd=tmp_path)
    assert_one_line_error(result, "no_such_dataset")


def test_missing_partner_file(tmp_path: Path, dataset: Path) -> None:
    (dataset / "Patches" / "LR" / "0003.png").unlink()
    result = run_cli("check", "--config", str(config_file(tmp_path, dataset)), cwd=tmp_path)
    assert_one_line_error(result, "0003.png")


def test_unreadable_png_names_the_file(tmp_path: Path, dataset: Path) -> None:
    broken = dataset / "Val" / "GT" / "0001.png"
    broken.write_bytes(b"this is not a png at all")
    path = config_file(tmp_path, dataset)
    for args in (["check"], ["train", "--no-web"]):
        result = run_cli(*args, "--config", str(path), cwd=tmp_path)
        assert_one_line_error(result, str(broken))


def test_missing_config_file_and_bad_resume(tmp_path: Path, dataset: Path) -> None:
    result = run_cli("train", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert_one_line_error(result, "config file not found", "nope.toml")
    path = config_file(tmp_path, dataset)
    result = run_cli(
        "train",
        "--config",
        str(path),
        "--no-web",
        "--resume",
        str(tmp_path / "missing.pt"),
        cwd=tmp_path,
    )
    assert_one_line_error(result, "missing.pt")


def test_run_directory_inside_dataset_is_refused(tmp_path: Path, dataset: Path) -> None:
    path = config_file(tmp_path, dataset, DATA_ROOT=str(dataset / "Learn"))
    result = run_cli("train", "--config", str(path), "--no-web", cwd=tmp_path)
    assert_one_line_error(result, "DATA_ROOT", "dataset")
    assert not (dataset / "Learn").exists()


def test_demo_trains_and_validates_from_a_fresh_directory(tmp_path: Path) -> None:
    """`python -m vsr_async` builds the demo data and trains; here bounded by MAX_STEPS."""
    result = run_cli(
        "--no-web", "--set", "MAX_STEPS=20", "--set", "VAL_STEP_EVERY=10", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    learn = tmp_path / "vsr_demo" / "Learn"
    assert sorted(p.name for p in learn.glob("Statistik_*.json")) == [
        "Statistik_10.json",
        "Statistik_20.json",
    ]
    assert (learn / "checkpoints" / "checkpoint_20.pt").is_file()
    assert "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "vsr_demo")
