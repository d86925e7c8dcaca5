"""The command line: one clear line and exit code 1 for every user mistake, never a traceback."""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
from helpers import TINY_SETTINGS, run_cli, write_patch_dataset, write_toml

import vsr_async
from vsr_async.__main__ import main
from vsr_async.errors import one_line
from vsr_async.files.logs import LOG_NAME, RunLogging
from vsr_async.settings import Config, field_docs, load_config


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


def test_missing_partner_file_is_skipped_and_named(tmp_path: Path, dataset: Path) -> None:
    """The predecessor skipped a GT without LR; so does check (test_predecessor_datasets)."""
    (dataset / "Patches" / "LR" / "0003.png").unlink()
    result = run_cli("check", "--config", str(config_file(tmp_path, dataset)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "    Patches/GT/0003.png: no LR partner (Patches/LR/0003.png does not exist)"
        in result.stdout.splitlines()
    )


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


# Bad config files: (file name, content, fragments the one error line must hold; FILE = its path).
# A Python config is the user's code, run by the loader: whatever it does is reported naming the
# file. A bad value names its key.
BAD_CONFIG_FILES = [
    (
        "raises.py",
        b'N_FEATS = 8\ndef get_config():\n    raise RuntimeError("no GPU here")\n',
        ["FILE", "line 3", "RuntimeError: no GPU here"],
    ),
    (
        "int_key.py",
        b"def get_config():\n    return {1: 2}\n",
        ["FILE", "get_config() returned the key 1", "keys must be strings"],
    ),
    ("list.py", b"def get_config():\n    return [1]\n", ["FILE", "must return a dict, got list"]),
    ("exits.py", b"import sys\nsys.exit(3)\n", ["FILE", "called sys.exit(3) while being loaded"]),
    (
        "exits_in_get_config.py",
        b"import sys\ndef get_config():\n    sys.exit('bye')\n",
        ["FILE", "called sys.exit('bye') while being loaded"],
    ),
    (
        "module_raises.py",
        b"N_FEATS = 8\nN_BLOCKS = 1 / 0\n",
        ["FILE", "line 2", "ZeroDivisionError"],
    ),
    ("syntax.py", b"N_FEATS = 8\nN_BLOCKS = (\n", ["FILE", "line 2", "SyntaxError"]),
    ("latin1.py", b"NAME = '\xe9'\n", ["FILE", "line 1", "SyntaxError", "utf-8"]),
    ("latin1.toml", b"DATA_ROOT = '\xe9'\n", ["FILE", "not valid TOML", "not UTF-8", "byte 0xe9"]),
    ("nul_data_root.toml", b'DATA_ROOT = "Learn\\u0000x"\n', ["DATA_ROOT", "NUL byte"]),
    ("nul_dataset_root.toml", b'DATASET_ROOT = "d\\u0000s"\n', ["DATASET_ROOT", "NUL byte"]),
]


def assert_exactly_one_line(result, *fragments: str) -> None:
    """Exit 1, stderr one `vsr_async: error:` line holding every fragment, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsr_async: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_CONFIG_FILES)
def test_bad_config_file_is_one_line(
    tmp_path: Path, name: str, content: bytes, fragments: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    for args in (["check"], ["train", "--no-web"]):
        result = run_cli(*args, "--config", str(path), cwd=tmp_path)
        assert_exactly_one_line(result, *(str(path) if f == "FILE" else f for f in fragments))


def test_config_path_that_is_not_a_readable_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    for path, fragment in ((folder, "is a directory"), (loop, "cannot be read")):
        result = run_cli("check", "--config", str(path), cwd=tmp_path)
        assert_exactly_one_line(result, str(path), fragment)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_config_file_without_read_permission(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("N_FEATS = 8\n")
    path.chmod(0)
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert_exactly_one_line(result, str(path), "cannot be read", "Permission denied")


def test_host_that_cannot_be_a_name(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "run.toml", {"DATASET_ROOT": str(tmp_path)})
    result = run_cli("train", "--config", str(path), "--host", "not..a..host", cwd=tmp_path)
    assert_exactly_one_line(result, "WEB_HOST", "not..a..host")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [  # argv cannot carry a NUL byte, so these call main() in this process
        (["check", "--config", "run\0.toml"], "option --config: path contains a NUL byte"),
        (["train", "--config", "{config}", "--resume", "a\0.pt"], "option --resume"),
        (["check", "--config", "{config}", "--set", "DATA_ROOT=L\0"], "config key DATA_ROOT"),
        (["train", "--config", "{config}", "--set", "DATASET_ROOT=\0"], "config key DATASET_ROOT"),
    ],
)
def test_nul_byte_in_a_path_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    config = write_toml(tmp_path / "run.toml", {"DATASET_ROOT": str(tmp_path)})
    assert main([a.replace("{config}", str(config)) for a in args]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and fragment in lines[0], captured.err
    assert "\0" not in captured.err and "\\x00" in lines[0]  # shown escaped, not cut off


def test_error_lines_escape_control_characters() -> None:
    assert one_line("dataset a\nb\0c\udcff.png: bad") == "dataset a\\nb\\x00c\\xff.png: bad"
    assert one_line("Größe 3 µm") == "Größe 3 µm"


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


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("nosuchhost.invalid", "cannot resolve the host 'nosuchhost.invalid'"),  # RFC 6761
        ("192.0.2.1", "'192.0.2.1' is not an address of this machine"),  # TEST-NET-1
    ],
)
def test_host_the_panel_cannot_bind_is_one_line(tmp_path: Path, host: str, fragment: str) -> None:
    """A well-formed WEB_HOST that fails at bind time: one error line naming the key and the
    host, exit 1. (Log lines of the starting run may come before it: the panel binds as the
    run starts.)"""
    dataset = write_patch_dataset(tmp_path / "data", train=2, val=1)
    path = write_toml(
        tmp_path / "run.toml",
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(dataset),
            "DATA_ROOT": str(tmp_path / "Learn"),
            "WEB_ENABLED": True,
        },
    )
    args = ("train", "--config", str(path), "--host", host, "--port", "0", "--no-keyboard")
    result = run_cli(*args, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"vsr_async: error: config key WEB_HOST: {fragment}"), errors


# --- conventions: --version, the key listing, levels on the console, Python warnings -----------


def test_version_comes_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"vsr_async {vsr_async.__version__}\n"


def test_config_lists_every_key_with_default_range_and_doc(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = field_docs()
    assert [line.split(" = ")[0] for line in lines[::2]] == list(docs)
    assert [line.strip() for line in lines[1::2]] == list(docs.values())
    assert "N_FEATS = 64  (in [4, 1024])" in lines
    assert "MAX_LR = 0.0001  (in [1e-12, 1]; live)" in lines
    assert "AMP = \"auto\"  (one of 'auto', 'bf16', 'fp16', 'off')" in lines


def test_config_write_makes_a_loadable_file_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.py"
    assert main(["config", "--write", str(path)]) == 0
    assert load_config(path) == Config()
    path.write_text("N_FEATS = 8\n")
    capsys.readouterr()
    assert main(["config", "--write", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"vsr_async: error: option --write: {path} exists (never overwritten)\n"
    )
    assert path.read_text() == "N_FEATS = 8\n"


def test_console_lines_name_warnings_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = RunLogging(tmp_path, console=True)
    log = logging.getLogger("vsr_async.test_cli")
    log.info("step 5")
    log.warning("disk nearly full")
    log.error("checkpoint not written")
    logs.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "step 5",
        "WARNING disk nearly full",
        "ERROR checkpoint not written",
    ]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", line.split(" ", 1)[0]) for line in lines)


def test_python_warnings_go_to_training_log_while_a_run_logs(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        logs = RunLogging(tmp_path, console=False)
        warnings.warn("an old torch API", DeprecationWarning, stacklevel=1)
        logs.close()
        assert warnings.showwarning is before  # restored on close
        with pytest.warns(UserWarning):
            warnings.warn("after the run", UserWarning, stacklevel=1)
    text = (tmp_path / LOG_NAME).read_text(encoding="utf-8")
    assert re.search(r"WARNING py\.warnings: .*DeprecationWarning: an old torch API", text), text
    assert "after the run" not in text
