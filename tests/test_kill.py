"""SIGKILL at random moments while Statistik files are being written: every file left is
complete JSON, and the next start removes any temp file the kill left behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, TINY_SETTINGS, write_patch_dataset, write_toml

KILLS = 20


def start_training(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vsr_async",
            "train",
            "--config",
            str(config_path),
            "--no-web",
            "--no-keyboard",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def statistik_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("Statistik_*.json"))


def temp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name.startswith(".Statistik_")]


def mtime_ns(path: Path) -> int:
    """0 for a file gone since it was listed (a resume moves a lost branch's files aside)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def wait_for_write_since(run_dir: Path, started_ns: int, process: subprocess.Popen) -> None:
    """Block until this process has written a Statistik file (polling the directory)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        written = any(mtime_ns(p) >= started_ns for p in statistik_files(run_dir))
        # ... and a checkpoint exists: a kill before the first one leaves a folder that a fresh
        # start would (rightly) not take over, so the next start would go to a sibling folder.
        if written and any((run_dir / "checkpoints").glob("*.pt")):
            return
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    raise AssertionError("no Statistik file written within 120 s")


def test_sigkill_during_statistics_writes_leaves_only_complete_files(tmp_path: Path) -> None:
    dataset = write_patch_dataset(tmp_path / "data")
    run_dir = tmp_path / "Learn"
    config = write_toml(
        tmp_path / "kill.toml",
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(dataset),
            "DATA_ROOT": str(run_dir),
            "VAL_STEP_EVERY": 1,  # a Statistik write after every step
            "LOG_TBOARD_EVERY": 1,
            "SAVE_STEP_EVERY": 1_000_000,
        },
    )
    rng = random.Random(1234)
    temps_seen_after_kill = 0
    for _ in range(KILLS):
        stale_before = set(temp_files(run_dir)) if run_dir.exists() else set()
        started_ns = time.time_ns()
        process = start_training(config)
        try:
            wait_for_write_since(run_dir, started_ns, process)
            # The next start removed what the previous kill left (before writing anything).
            assert not stale_before & set(temp_files(run_dir))
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            process.stderr.close()
        temps_seen_after_kill += len(temp_files(run_dir))
        for path in statistik_files(run_dir):
            data = json.loads(path.read_text(encoding="utf-8"))  # complete, parseable
            assert data["statistics_file"] == path.name
            assert data["validation_step"] == data["step_current"]
    print(f"{KILLS} kills, {temps_seen_after_kill} temp files found right after a kill")

    # A clean start after the last kill removes what is left and stops cleanly on SIGTERM.
    process = start_training(config)
    try:
        wait_for_write_since(run_dir, time.time_ns(), process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        process.stderr.close()
    assert temp_files(run_dir) == []
