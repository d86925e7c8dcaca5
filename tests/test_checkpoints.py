"""Checkpoint files: whole after any kill, verified on load, this run's own pruned to
KEEP_CHECKPOINTS newest plus `best.pt`, and the best survives restarts (the cases where a folder
holds other files: test_checkpoint_safety.py).

The SIGKILL test kills real `python -m vsr_async` processes at random moments while they write a
checkpoint every step; each next start is the check of the previous kill.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CONTINUING, CliRun, cli_config, finish_run

from vsr_async.errors import CheckpointError
from vsr_async.files.checkpoints import (
    BEST_NAME,
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    checkpoint_name,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)
from vsr_async.runtime import checkpointer
from vsr_async.runtime.checkpointer import CheckpointWriter
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.worker import GpuWorker

SAVED = re.compile(r"checkpoint saved: checkpoint_(\d+)\.pt")
NEW_RUN = re.compile(r"no checkpoint in \S+: starting a new run")


def minimal_state(config: Any, step: int, best_quality: float | None = None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model": {"w": torch.full((4,), float(step))},
        "optimizer": {"state": {}, "param_groups": []},
        "config": config.to_dict(),
        "run_id": "run-a",
        "best_quality": best_quality,
        "best_step": None if best_quality is None else step,
    }


# --- loading and verifying -----------------------------------------------------------------------


def test_damaged_files_are_one_line_errors_naming_the_file(tmp_path: Path, make_config) -> None:
    config = make_config()
    good = tmp_path / "checkpoint_7.pt"
    write_checkpoint(good, minimal_state(config, 7))
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.full((4,), 7.0))
    data = good.read_bytes()

    cases = {f"cut{n}.pt": data[:n] for n in (0, 10, len(data) // 2, len(data) - 1)}
    torch.save({**minimal_state(config, 1), "extra": Path("x")}, tmp_path / "pickled.pt")
    cases["pickled.pt"] = (tmp_path / "pickled.pt").read_bytes()  # not weights_only-safe
    torch.save({"step": 1}, tmp_path / "partial.pt")
    cases["partial.pt"] = (tmp_path / "partial.pt").read_bytes()
    torch.save({**minimal_state(config, 1), "format_version": 99}, tmp_path / "future.pt")
    cases["future.pt"] = (tmp_path / "future.pt").read_bytes()
    messages = {}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        messages[name] = message = str(err.value)
        assert message.startswith(f"checkpoint {path}: ") and "\n" not in message, message
    assert "cannot be loaded" in messages["cut10.pt"]
    assert "cannot be loaded" in messages["pickled.pt"]
    assert (
        "incomplete (missing format_version, model, optimizer, config, run_id)"
        in messages["partial.pt"]
    )
    assert "has format 99" in messages["future.pt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, make_config) -> None:
    target = tmp_path / "checkpoint_3.pt"
    write_checkpoint(target, minimal_state(make_config(), 3))
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (whatever torch raises for an unpicklable value)
        write_checkpoint(target, {"bad": lambda: None})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_3.pt"]


def test_resume_choice_counts_best_pt_and_keeps_its_quality(tmp_path: Path, make_config) -> None:
    """best.pt newer than every periodic file is the newest state; older, it still keeps the
    best quality (so a restart from an older periodic file cannot lower the bar)."""
    config = make_config()
    write_checkpoint(tmp_path / checkpoint_name(10), minimal_state(config, 10, 0.40))
    write_checkpoint(tmp_path / BEST_NAME, minimal_state(config, 15, 0.50))
    path, state = find_resume_checkpoint(tmp_path, config)
    assert path.name == BEST_NAME and state["step"] == 15

    write_checkpoint(tmp_path / checkpoint_name(20), minimal_state(config, 20, 0.45))
    path, state = find_resume_checkpoint(tmp_path, config)
    assert path.name == checkpoint_name(20) and state["step"] == 20
    assert (state["best_quality"], state["best_step"]) == (0.50, 15)

    (tmp_path / BEST_NAME).write_bytes(b"damaged")
    path, state = find_resume_checkpoint(tmp_path, config)
    assert path.name == checkpoint_name(20) and state["best_quality"] == 0.45


class CountingEngine:
    """Stands in for the engine on the GPU thread: each capture is a new step."""

    def __init__(self, config: Any) -> None:
        self.config, self.step = config, 0

    def capture_state(self) -> dict[str, Any]:
        self.step += 1
        return minimal_state(self.config, self.step)

    def close(self) -> None:
        pass


async def test_saves_wait_while_writes_pile_up(
    tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk holds back the third save (bounded memory), and every write completes."""
    config = make_config()
    worker = GpuWorker(lambda: CountingEngine(config))
    await worker.start()
    writer = CheckpointWriter(tmp_path, worker, StatsStore(run_id="r", step_max=9), config)
    disk = threading.Event()
    real_write = checkpointer.write_checkpoint

    def slow_write(path: Path, state: dict[str, Any]) -> None:  # fault injection: a stuck disk
        assert disk.wait(60)
        real_write(path, state)

    monkeypatch.setattr(checkpointer, "write_checkpoint", slow_write)
    try:
        written = [await writer.save("a"), await writer.save("b")]
        third = asyncio.ensure_future(writer.save("c"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(third), 0.3)
        assert worker.step == 2  # no third copy while two writes are pending
        disk.set()
        written.append(await asyncio.wait_for(third, 60))
        assert await asyncio.wait_for(asyncio.gather(*written), 60) == [
            checkpoint_name(s) for s in (1, 2, 3)
        ]
    finally:
        disk.set()
        await writer.close()
        await worker.close()


# --- retention and best ------------------------------------------------------------------------


async def test_retention_keeps_the_newest_and_best(make_config) -> None:
    run = await finish_run(
        make_config, MAX_STEPS=9, SAVE_STEP_EVERY=2, KEEP_CHECKPOINTS=2, VAL_STEP_EVERY=3
    )
    directory = run.run_dir / CHECKPOINT_DIR
    assert sorted(p.name for p in directory.iterdir()) == [
        BEST_NAME,
        checkpoint_name(8),
        checkpoint_name(9),
    ]
    best = load_checkpoint(directory / BEST_NAME)
    assert best["best_quality"] == run.store.validation.best_quality
    assert best["step"] == best["best_step"] == run.store.validation.best_step
    log_text = (run.run_dir / "training.log").read_text()
    assert "checkpoint retention: removed checkpoint_2.pt" in log_text


async def test_best_survives_a_restart_and_a_worse_validation(start_run) -> None:
    run = await start_run(VAL_STEP_EVERY=3, MAX_STEPS=6)
    await asyncio.wait_for(run.supervisor.finished.wait(), 120)
    best_path = run.run_dir / CHECKPOINT_DIR / BEST_NAME
    best_quality = run.store.validation.best_quality
    assert best_quality is not None and best_path.is_file()
    best_bytes = best_path.read_bytes()

    again = await start_run(VAL_STEP_EVERY=1_000_000, MAX_STEPS=1_000_000)
    assert again.store.snapshot()["best_quality_ever"] == best_quality
    await asyncio.wait_for(again.supervisor.pause(), 60)

    def spoil(engine: Any) -> None:  # fault injection: weights that cannot beat the best
        torch.manual_seed(1)
        with torch.no_grad():
            for p in engine.model.parameters():
                p.add_(torch.randn_like(p))

    await again.supervisor.worker.run_on_engine(spoil)
    request = await again.supervisor.request_validation(Trigger.WEB)
    report = await asyncio.wait_for(request.result, 60)
    assert report.metrics["quality_ki_value"] < best_quality
    snapshot = again.store.snapshot()
    assert snapshot["best_quality_ever"] == best_quality
    await asyncio.wait_for(again.supervisor.save_checkpoint("test"), 60)  # writes have drained
    assert best_path.read_bytes() == best_bytes


# --- SIGKILL at random moments during checkpoint writes -----------------------------------------

KILLS_PER_CHAIN = 10  # two chains run side by side: 20 kills


async def until_a_write_begins(directory: Path, run: CliRun, timeout: float = 60) -> None:
    """Poll (1 ms) for the temp file of a write in progress: the kill's reference moment."""

    async def poll() -> None:
        while not any(directory.glob(".*.tmp")):
            assert run.proc.returncode is None, run.output[-3000:]
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


async def kill_chain(config_file: Path, directory: Path, seed: int) -> dict[str, int]:
    """Start, let it write, SIGKILL at a random moment, check the files; the next start (resume
    auto) must continue from the newest complete checkpoint and remove the temp files."""
    rng = random.Random(seed)
    expected: int | None = None  # step of the newest complete checkpoint after the last kill
    leftovers: list[Path] = []
    counts = {"kills": 0, "kills_mid_write": 0}
    for attempt in range(KILLS_PER_CHAIN + 1):
        run = await CliRun.start(config_file, "--resume", "auto")
        try:
            match = await run.wait_for(CONTINUING, NEW_RUN)
            if expected is None:
                assert match.re is NEW_RUN
            else:
                assert match.re is CONTINUING, run.output[-3000:]
                assert Path(match.group(1)) == directory / checkpoint_name(expected)
                assert int(match.group(2)) == expected
            assert not any(p.exists() for p in leftovers)  # removed by this start
            if attempt == KILLS_PER_CHAIN:
                run.send(signal.SIGTERM)  # the last one stops cleanly
                assert await run.finish() == 0
                break
            await run.wait_for(SAVED)  # writing every step from now on
            await until_a_write_begins(directory, run)
            await asyncio.sleep(rng.uniform(0.0, 0.015))  # a random moment of that write
            run.proc.kill()
            assert await run.finish() == -signal.SIGKILL
        finally:
            await run.close()
        counts["kills"] += 1
        leftovers = sorted(directory.glob(".*.tmp"))
        counts["kills_mid_write"] += bool(leftovers)
        steps = []
        for step, path in list_checkpoints(directory):
            assert load_checkpoint(path)["step"] == step  # every file left is whole
            steps.append(step)
        assert steps and (expected is None or max(steps) > expected)
        expected = max(steps)
    for _, path in list_checkpoints(directory):
        load_checkpoint(path)
    assert not list(directory.glob(".*.tmp"))
    return counts


async def test_sigkill_during_checkpoint_writes_never_leaves_a_damaged_file(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Done-when 2: >= 20 kills; every file left loads; resume takes the newest complete one."""
    chains = []
    for i in range(2):
        root = tmp_path / f"Learn{i}"
        config = cli_config(
            tmp_path / f"kill{i}.toml",
            tiny_dataset,
            root,
            N_FEATS=32,  # ~0.7 MB files: a write (with its fsyncs) takes some milliseconds
            SAVE_STEP_EVERY=1,
            KEEP_CHECKPOINTS=3,
        )
        chains.append(kill_chain(config, root / CHECKPOINT_DIR, seed=i))
    results = await asyncio.gather(*chains)
    assert sum(r["kills"] for r in results) >= 20
    assert sum(r["kills_mid_write"] for r in results) >= 5  # the kills did hit writes


async def test_stale_temp_files_are_removed_at_start(make_config, tmp_path: Path) -> None:
    directory = tmp_path / "Learn" / CHECKPOINT_DIR
    directory.mkdir(parents=True)
    stale = directory / ".checkpoint_5.pt.999-deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    run = await finish_run(make_config, MAX_STEPS=1)
    assert not stale.exists()
    log_text = (run.run_dir / "training.log").read_text()
    assert f"removed {stale.name}, left by an interrupted checkpoint write" in log_text
