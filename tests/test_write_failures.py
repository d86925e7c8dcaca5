"""Statistik writes that fail (a full disk, or a read-only directory) never stop training: the
error is logged and shown in the store, and the next validation after recovery writes again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from vsr_async.files.statistics import list_statistics
from vsr_async.runtime.commands import Trigger


class FullDisk:
    """A small tmpfs that the test fills up and frees again (needs root, as CI and dev run)."""

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point
        self.filler = mount_point / "filler.bin"

    def fail_writes(self) -> None:
        for name, chunk in (("filler.bin", 1 << 16), ("filler2.bin", 1)):  # then the last bytes
            with contextlib.suppress(OSError), open(self.mount_point / name, "wb") as f:
                while True:
                    f.write(b"\0" * chunk)
                    f.flush()

    def recover(self) -> None:
        self.filler.unlink()
        (self.mount_point / "filler2.bin").unlink(missing_ok=True)

    expected_error = os.strerror(errno.ENOSPC)


class ReadOnlyDir:
    """For a non-root user: a directory without write permission."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fail_writes(self) -> None:
        self.directory.chmod(0o555)

    def recover(self) -> None:
        self.directory.chmod(0o755)

    expected_error = os.strerror(errno.EACCES)


@pytest.fixture
def failing_place(tmp_path: Path) -> Iterator[tuple[Path, FullDisk | ReadOnlyDir]]:
    """(run directory, fault) — a full tmpfs as root, a read-only folder otherwise."""
    if os.geteuid() != 0:
        run_dir = tmp_path / "Learn"
        run_dir.mkdir()
        fault = ReadOnlyDir(run_dir)
        yield run_dir, fault
        fault.recover()
        return
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point / "Learn", FullDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_failed_writes_do_not_stop_training_and_recover(start_run, failing_place) -> None:
    run_dir, fault = failing_place
    run = await start_run(DATA_ROOT=str(run_dir), LOG_TBOARD_EVERY=2)
    store, supervisor = run.store, run.supervisor
    log_lines: list[str] = []
    run.logging.subscribe(lambda line: log_lines.append(line["message"]))

    first = await asyncio.wait_for((await supervisor.request_validation(Trigger.WEB)).result, 60)
    assert first.statistics_file is not None

    fault.fail_writes()
    failed = await asyncio.wait_for((await supervisor.request_validation(Trigger.WEB)).result, 60)
    assert failed.statistics_file is None and failed.statistics_error
    assert fault.expected_error in store.last_statistics_error
    assert f"Statistik_{failed.step}.json" in store.last_statistics_error
    assert store.snapshot()["last_statistics_error"] == store.last_statistics_error
    failed_at = store.progress.step
    await wait_until(lambda: store.progress.step >= failed_at + 4, store)  # training goes on
    await wait_until(
        lambda: any(f"could not write Statistik_{failed.step}.json" in m for m in log_lines),
        store,
    )
    assert not (run_dir / f"Statistik_{failed.step}.json").exists()

    fault.recover()
    await wait_until(lambda: store.progress.step > failed.step, store)
    recovered = await asyncio.wait_for(
        (await supervisor.request_validation(Trigger.WEB)).result, 60
    )
    assert recovered.statistics_file == f"Statistik_{recovered.step}.json"
    steps = [step for step, _ in list_statistics(run_dir)]
    assert failed.step in steps and recovered.step in steps  # the kept snapshot was retried
    assert store.last_statistics_error is None
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
