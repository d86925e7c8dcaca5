"""The run folder (DATA_ROOT), issue 10 items 4, 5, 8 and 10: one process at a time (the
second stops naming the first's PID), a fresh start never adopts or overwrites an earlier run's
files, folder problems are one line naming the path, and training.log survives a full disk and
folder names of any bytes. The bad-input table in docs/design.md names these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, CliRun, cli_config, finish_run, run_cli

from vsr_async.errors import ConfigError
from vsr_async.files.checkpoints import CHECKPOINT_DIR
from vsr_async.files.run_lock import LOCK_NAME, RunLock
from vsr_async.runtime.launch import build_run, scan_async

SAVED = re.compile(r"checkpoint saved: checkpoint_(\d+)\.pt")


def hashes(root: Path) -> dict[str, str]:
    """Every file under `root` (relative name -> sha256)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("vsr_async: error:")]


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A fresh mount point, unmounted (lazily) at teardown whatever the test mounted there."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def mount_tmpfs(point: Path, options: str) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


# --- one process per folder ------------------------------------------------------------------


async def test_second_process_stops_naming_the_first_and_changes_nothing(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    data_root = tmp_path / "Learn"
    config = cli_config(
        tmp_path / "run.toml",
        tiny_dataset,
        data_root,
        LOG_TBOARD_EVERY=1,
        VAL_STEP_EVERY=2,
        SAVE_STEP_EVERY=2,
    )
    first = await CliRun.start(config)
    try:
        await first.wait_for(SAVED)  # it has Statistik files and a checkpoint now
        first.send(signal.SIGSTOP)  # frozen: its files cannot change under the hashes
        try:
            before = hashes(data_root)
            assert (data_root / LOCK_NAME).read_text().split()[0] == str(first.proc.pid)
            for resume in ("auto", "never"):
                second = await asyncio.to_thread(
                    run_cli, "train", "--config", str(config), "--no-web", "--no-keyboard",
                    "--resume", resume, cwd=tmp_path,
                )  # fmt: skip
                assert second.returncode == 1, second.stderr
                assert error_lines(second.stderr) == [
                    f"vsr_async: error: config key DATA_ROOT: {data_root} is in use by another "
                    f"vsr_async run (PID {first.proc.pid}); stop that run or choose another "
                    "DATA_ROOT"
                ], second.stderr
                assert "Traceback" not in second.stderr
            assert hashes(data_root) == before
            assert sorted(p.name for p in tmp_path.iterdir()) == ["Learn", "run.toml"]
        finally:
            first.send(signal.SIGCONT)
        await first.wait_for(SAVED)  # the first run goes on
        first.send(signal.SIGTERM)
        assert await first.finish() == 0, first.output[-3000:]
    finally:
        await first.close()


async def test_a_killed_holder_does_not_block_the_next_run(
    tmp_path: Path, tiny_dataset: Path, start_run
) -> None:
    data_root = tmp_path / "Learn"  # the folder `start_run` uses
    config = cli_config(tmp_path / "run.toml", tiny_dataset, data_root, SAVE_STEP_EVERY=2)
    killed = await CliRun.start(config)
    try:
        saved_step = int((await killed.wait_for(SAVED)).group(1))
        killed.proc.kill()
        assert await killed.finish() == -signal.SIGKILL
    finally:
        await killed.close()
    assert (data_root / LOCK_NAME).read_text().split()[0] == str(killed.proc.pid)  # stale

    run = await start_run(SAVE_STEP_EVERY=2)
    assert run.run_dir == data_root  # resumed in place, not pushed aside
    assert run.store.progress.step >= saved_step
    assert (data_root / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    """Within one process too (flock belongs to the open file), and `release` frees it."""
    first = RunLock.acquire(tmp_path)
    with pytest.raises(
        ConfigError, match=rf"in use by another vsr_async run \(PID {os.getpid()}\)"
    ):
        RunLock.acquire(tmp_path)
    first.release()
    first.release()  # twice is fine
    RunLock.acquire(tmp_path).release()


FORKING_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from vsr_async.files.run_lock import RunLock

    lock = RunLock.acquire(Path(sys.argv[1]))
    child = os.fork()  # any forked helper (the loader itself uses forkserver or spawn)
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
    """
)


def test_a_forked_child_does_not_keep_a_killed_runs_folder(tmp_path: Path) -> None:
    """A worker process that outlives a SIGKILLed run must not hold the folder for it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        with pytest.raises(ConfigError, match=rf"\(PID {holder.pid}\)"):
            RunLock.acquire(tmp_path)
        holder.kill()
        holder.wait(30)
        os.kill(child, 0)  # the child still runs (it would raise if it had gone)
        RunLock.acquire(tmp_path).release()
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdout.close()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


# --- a fresh start beside an earlier run -----------------------------------------------------


@pytest.mark.parametrize(
    "runtime_config", [b'{"MAX_LR": 0.5}', b"\x00{garbage"], ids=["stale", "garbage"]
)
async def test_fresh_start_goes_beside_an_earlier_run(make_config, runtime_config: bytes) -> None:
    """Done-when for item 5: Statistik files and runtime_config.json but no checkpoint."""
    old = Path(make_config().DATA_ROOT)
    (old / "tensorboard").mkdir(parents=True)
    (old / "Statistik_10.json").write_text(json.dumps({"run_id": "old", "step_current": 10}))
    (old / "Statistik_20.json").write_text(json.dumps({"run_id": "old", "step_current": 20}))
    (old / "runtime_config.json").write_bytes(runtime_config)
    (old / "tensorboard" / "events.out.tfevents.1.old").write_bytes(b"\0old events")
    (old / "training.log").write_text("2026-01-01 00:00:00 INFO    vsr_async: old run\n")
    before = hashes(old)

    run = await finish_run(make_config, MAX_STEPS=10, VAL_STEP_EVERY=10)

    assert hashes(old) == before  # not one byte changed, nothing added (not even a lock file)
    assert run.run_dir != old and run.run_dir.parent == old.parent
    assert run.config.MAX_LR == 1e-3 and run.store.config_live["MAX_LR"] == 1e-3
    snapshot = json.loads((run.run_dir / "Statistik_10.json").read_text(encoding="utf-8"))
    assert snapshot["run_id"] == run.store.run_id != "old"
    assert 0 < snapshot["learning_rate_value"] <= 1e-3
    log_text = (run.run_dir / "training.log").read_text(encoding="utf-8")
    notices = [line for line in log_text.splitlines() if "earlier run's files" in line]
    assert len(notices) == 1 and "Statistik_10.json" in notices[0], log_text
    assert f"this run writes to {run.run_dir}" in notices[0]
    assert "live config restored" not in log_text and "continuing from" not in log_text


async def test_resume_restores_its_own_runtime_config(make_config) -> None:
    first = await finish_run(make_config, MAX_STEPS=3)
    (first.run_dir / "runtime_config.json").write_text('{"MAX_LR": 0.0005}')
    again = await finish_run(make_config, MAX_STEPS=5)
    assert again.run_dir == first.run_dir
    assert again.config.MAX_LR == 0.0005
    log_text = (again.run_dir / "training.log").read_text(encoding="utf-8")
    assert "live config restored from runtime_config.json" in log_text
    assert re.search(r"continuing from \S+checkpoint_3\.pt \(step 3\)", log_text)


async def test_resume_from_a_file_elsewhere_does_not_write_into_an_earlier_run(
    make_config, tmp_path: Path
) -> None:
    """--resume FILE from another folder: DATA_ROOT's own files are another run's."""
    donor = await finish_run(make_config, DATA_ROOT=str(tmp_path / "Donor"), MAX_STEPS=3)
    old = Path(make_config().DATA_ROOT)
    old.mkdir()
    (old / "Statistik_3.json").write_text("{}")
    (old / "runtime_config.json").write_text('{"MAX_LR": 0.5}')
    before = hashes(old)
    source = donor.run_dir / CHECKPOINT_DIR / "checkpoint_3.pt"
    run = await finish_run(make_config, resume=str(source), MAX_STEPS=4, VAL_STEP_EVERY=4)
    assert hashes(old) == before
    assert run.run_dir not in (old, donor.run_dir) and run.config.MAX_LR == 1e-3
    assert (run.run_dir / "Statistik_4.json").is_file()


# --- run-folder errors (item 8) --------------------------------------------------------------


@pytest.mark.parametrize("case", ["checkpoints is a file", "training.log is a folder"])
async def test_run_folder_layout_errors_are_one_line(make_config, case: str) -> None:
    config = make_config()
    data_root = Path(config.DATA_ROOT)
    data_root.mkdir()
    if case == "checkpoints is a file":
        culprit = data_root / CHECKPOINT_DIR
        culprit.write_text("not a folder")
    else:
        culprit = data_root / "training.log"
        culprit.mkdir()
    with pytest.raises(ConfigError) as err:
        build_run(config, await scan_async(config), console_log=False)
    message = str(err.value)
    assert message.startswith(f"config key DATA_ROOT: {culprit} is ") and "\n" not in message
    RunLock.acquire(data_root).release()  # the failed start gave the folder back


def test_read_only_data_root_is_one_line(tmp_path: Path, tiny_dataset: Path, mount_point) -> None:
    """A real read-only mount: root ignores file modes, so chmod would prove nothing."""
    mount_tmpfs(mount_point, "ro,size=1m")
    for data_root, words in (
        (mount_point, f"cannot write to {mount_point}: Read-only file system"),
        (mount_point / "Learn", f"cannot create {mount_point / 'Learn'}: Read-only file system"),
    ):
        config = cli_config(tmp_path / "run.toml", tiny_dataset, data_root)
        result = run_cli("train", "--config", str(config), "--no-web", "--no-keyboard")
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and words in lines[0], result.stderr


# --- training.log ----------------------------------------------------------------------------

FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import contextlib, logging, sys, threading
    from pathlib import Path
    from vsr_async.files.logs import RunLogging

    disk = Path(sys.argv[1])
    logs = RunLogging(disk / "Learn", console=True)
    seen = {key: threading.Event() for key in ("before", "line 99", "after")}
    logs.subscribe(lambda l: [e.set() for k, e in seen.items() if l["message"].startswith(k)])
    log = logging.getLogger("vsr_async.test")

    log.info("before the disk is full")
    seen["before"].wait(30)
    for name, chunk in (("filler.bin", 1 << 16), ("filler2.bin", 1)):  # then the last bytes
        with contextlib.suppress(OSError), open(disk / name, "wb") as f:
            while True:
                f.write(b"\\0" * chunk)
                f.flush()
    for i in range(100):
        log.info("line %d while the disk is full %s", i, "x" * 200)
    seen["line 99"].wait(30)
    (disk / "filler.bin").unlink()
    (disk / "filler2.bin").unlink()
    log.info("after the disk has room again")
    seen["after"].wait(30)
    logs.close()
    """
)


def test_full_disk_is_reported_once_and_logging_recovers(mount_point: Path) -> None:
    mount_tmpfs(mount_point, "size=1m")
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(mount_point)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    stderr = result.stderr
    log_path = mount_point / "Learn" / "training.log"
    assert "Logging error" not in stderr and "Traceback" not in stderr, stderr[:3000]
    failed = [line for line in stderr.splitlines() if "cannot write" in line]
    assert len(failed) == 1, stderr[-3000:]
    assert f"{log_path}: cannot write (No space left on device)" in failed[0]
    assert len(re.findall(r"line \d+ while the disk is full", stderr)) == 100  # console goes on
    again = [line for line in stderr.splitlines() if "writing again" in line]
    assert len(again) == 1 and f"{log_path}: writing again" in again[0], stderr[-3000:]
    log_text = log_path.read_text(encoding="utf-8")
    assert "before the disk is full" in log_text and "after the disk has room again" in log_text
    assert "writing again" in log_text  # the gap is marked in the file itself


async def test_non_utf8_data_root_is_escaped_in_the_log(make_config, tmp_path: Path) -> None:
    name = os.fsdecode(b"Learn-\xff\xfe")  # a folder name that is not UTF-8
    run = await finish_run(make_config, DATA_ROOT=str(tmp_path / name), MAX_STEPS=2)
    raw = (tmp_path / name / "training.log").read_bytes()
    text = raw.decode("utf-8")  # valid UTF-8 throughout
    escaped = str(tmp_path / "Learn-\\xff\\xfe")
    assert f"run directory {escaped}" in text
    assert run.store.progress.step == 2
