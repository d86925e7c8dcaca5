"""Nothing lost around checkpoints (issue 10, items 3 and 6, and three of item 10).

Bad input tried -> what the user sees -> test:
- `--resume` a step-10 checkpoint into a folder holding checkpoint_40/50/60 (KEEP_CHECKPOINTS=3)
  -> one warning naming the newer files and the superseded/ folder they now lie in, unchanged;
  the new branch's saves are kept; a later `--resume auto` continues the new branch
  -> test_resume_from_an_older_checkpoint_keeps_both_branches
- zero-byte checkpoint_500.pt and checkpoint_1.pt, KEEP_CHECKPOINTS=1 -> each named as empty,
  left in place; new checkpoints kept
  -> test_unloadable_checkpoints_are_left_alone_and_new_ones_kept
- a model worse than the one in best.pt (0.447833 < 0.447880) -> "best.pt kept: it holds quality
  0.447880, ..." and best.pt unchanged -> test_best_is_replaced_only_by_a_better_model
- WEB_TOKEN set; resuming an old checkpoint that stored it -> no byte of it in any file of the run
  -> test_the_web_token_is_never_stored, test_secret_keys_are_never_live
- `--resume garbage.pt` -> one line "checkpoint PATH: cannot be loaded: not a vsr_async
  checkpoint, ..." (no torch advice, no ANSI codes), exit 1 -> test_resume_garbage_is_one_line,
  test_load_errors_carry_no_torch_advice
- retention after a save; the last step a scheduled save step -> "checkpoint saved" before
  "retention: removed"; the final checkpoint once -> test_log_order_and_one_final_checkpoint,
  test_a_repeated_save_writes_again_only_after_a_change
- DATA_ROOT/superseded is a file when newer files must move -> one line "config key DATA_ROOT:
  cannot create ...", nothing moved
  -> test_a_blocked_superseded_folder_is_one_line_and_moves_nothing
- a checkpoint of another run_id in the folder -> left alone by retention
  -> test_unloadable_checkpoints_are_left_alone_and_new_ones_kept
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import cli_config, finish_run, run_cli

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.checkpoints import (
    BEST_NAME,
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)
from vsr_async.files.superseded import SUPERSEDED_DIR, set_aside_newer_files
from vsr_async.runtime.checkpointer import CheckpointWriter
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.worker import GpuWorker
from vsr_async.settings import live_keys, secret_keys

TOKEN = "tok-9f3c1e77d2b54a0c8e6f"


def hashes(root: Path, *, skip: tuple[str, ...] = ("training.log",)) -> dict[Path, str]:
    """sha256 of every file under `root` (relative paths), except append-only logs."""
    return {
        path.relative_to(root): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in root.rglob("*")
        if path.is_file() and path.name not in skip
    }


def log_lines(run_dir: Path) -> list[str]:
    return (run_dir / "training.log").read_text(encoding="utf-8").splitlines()


# --- item 3: resume from an older checkpoint ---------------------------------------------------


async def test_resume_from_an_older_checkpoint_keeps_both_branches(
    make_config, tmp_path: Path
) -> None:
    settings = dict(SAVE_STEP_EVERY=10, VAL_STEP_EVERY=10, KEEP_CHECKPOINTS=3)
    first = await finish_run(make_config, MAX_STEPS=10, **settings)
    run_dir, directory = first.run_dir, first.run_dir / CHECKPOINT_DIR
    kept_aside = tmp_path / "step10.pt"  # retention (KEEP=3) removes it from the run folder
    shutil.copy2(directory / checkpoint_name(10), kept_aside)
    await finish_run(make_config, MAX_STEPS=60, **settings)
    assert [s for s, _ in list_checkpoints(directory)] == [60, 50, 40]
    shutil.copy2(kept_aside, directory / checkpoint_name(10))  # the user puts it back
    before = hashes(run_dir)
    assert Path("Statistik_60.json") in before

    older = directory / checkpoint_name(10)
    branch = await finish_run(make_config, resume=str(older), MAX_STEPS=30, **settings)
    assert branch.run_dir == run_dir and branch.store.run_id == first.store.run_id
    folders = list((run_dir / SUPERSEDED_DIR).iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("-from-step-10"), folders
    aside = folders[0].relative_to(run_dir)
    after = hashes(run_dir)
    for path, digest in before.items():  # nothing lost: each old file, unchanged, somewhere
        assert after.get(path) == digest or after.get(aside / path) == digest, path
    for step in (40, 50, 60):
        name = Path(CHECKPOINT_DIR) / checkpoint_name(step)
        assert after[aside / name] == before[name]
    for step in range(20, 70, 10):
        assert after[aside / f"Statistik_{step}.json"] == before[Path(f"Statistik_{step}.json")]
    # the new branch's saves stay (before: each was deleted right after it was written)
    assert [s for s, _ in list_checkpoints(directory)] == [30, 20, 10]
    lines = log_lines(run_dir)
    notes = [line for line in lines if "older than files in" in line]
    assert len(notes) == 1, notes
    assert "checkpoint_40.pt, checkpoint_50.pt, checkpoint_60.pt" in notes[0]
    assert "5 Statistik files (steps 20-60)" in notes[0] and str(folders[0]) in notes[0]
    start = max(i for i, line in enumerate(lines) if f"continuing from {older}" in line)
    assert not any("retention: removed" in line for line in lines[start:])

    later = await finish_run(make_config, MAX_STEPS=50, **settings)  # --resume auto
    lines = log_lines(run_dir)
    assert f"continuing from {directory / checkpoint_name(30)} (step 30)" in "\n".join(lines)
    assert later.store.progress.step == 50  # the new branch went on, not the old 60
    # this run's lineage (10, 20, 30: same run_id, loaded) is pruned as usual: 3 newest stay
    assert [s for s, _ in list_checkpoints(directory)] == [50, 40, 30]
    start = max(i for i, line in enumerate(lines) if "continuing from" in line)
    removed = [line.rsplit(" ", 1)[1] for line in lines[start:] if "retention: removed" in line]
    assert removed == [checkpoint_name(10), checkpoint_name(20)]
    final = hashes(run_dir)
    assert {p: d for p, d in final.items() if aside in p.parents} == {
        p: d for p, d in after.items() if aside in p.parents
    }
    assert len(list((run_dir / SUPERSEDED_DIR).iterdir())) == 1


def test_a_blocked_superseded_folder_is_one_line_and_moves_nothing(
    tmp_path: Path, make_config
) -> None:
    config = make_config()
    directory = tmp_path / CHECKPOINT_DIR
    directory.mkdir()
    for step in (5, 9):
        state = {**FixedEngine(config, step).capture_state(), "run_id": "r"}
        write_checkpoint(directory / checkpoint_name(step), state)
    (tmp_path / SUPERSEDED_DIR).write_text("in the way")
    before = hashes(tmp_path)
    with pytest.raises(ConfigError) as err:
        set_aside_newer_files(tmp_path, 5)
    assert str(err.value).startswith(f"config key DATA_ROOT: cannot create {tmp_path}")
    assert "\n" not in str(err.value)
    assert hashes(tmp_path) == before
    (tmp_path / SUPERSEDED_DIR).unlink()
    folder = set_aside_newer_files(tmp_path, 5)
    assert folder is not None and (folder / CHECKPOINT_DIR / checkpoint_name(9)).is_file()
    assert [s for s, _ in list_checkpoints(directory)] == [5]
    assert set_aside_newer_files(tmp_path, 5) is None  # nothing newer any more


async def test_unloadable_checkpoints_are_left_alone_and_new_ones_kept(make_config) -> None:
    settings = dict(SAVE_STEP_EVERY=2, KEEP_CHECKPOINTS=1)
    first = await finish_run(make_config, MAX_STEPS=2, **settings)
    directory = first.run_dir / CHECKPOINT_DIR
    for step in (1, 500):  # below and above the step the next start resumes from
        (directory / checkpoint_name(step)).write_bytes(b"")
    foreign = {**load_checkpoint(directory / checkpoint_name(2)), "run_id": "another-run"}
    write_checkpoint(directory / checkpoint_name(0), {**foreign, "step": 0})
    foreign_bytes = (directory / checkpoint_name(0)).read_bytes()

    second = await finish_run(make_config, MAX_STEPS=6, **settings)
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(checkpoint_name(s) for s in (0, 1, 6, 500))
    assert (directory / checkpoint_name(0)).read_bytes() == foreign_bytes  # not this run's
    assert (directory / checkpoint_name(1)).stat().st_size == 0
    assert (directory / checkpoint_name(500)).stat().st_size == 0
    assert second.store.progress.step == 6
    lines = log_lines(second.run_dir)
    start = max(i for i, line in enumerate(lines) if "continuing from" in line)
    about_1 = [line for line in lines[start:] if checkpoint_name(1) in line]
    assert len(about_1) == 1 and "leaving checkpoint_1.pt alone" in about_1[0], about_1
    assert "the file is empty" in about_1[0]
    about_500 = [line for line in lines if checkpoint_name(500) in line]
    assert about_500 and all("the file is empty" in line for line in about_500), about_500
    assert not any(
        "removed checkpoint_500" in line or "removed checkpoint_1." in line for line in lines
    )
    saved = [line for line in lines[start:] if "checkpoint saved: checkpoint_" in line]
    assert [line.rsplit(" ", 1)[1] for line in saved] == [checkpoint_name(s) for s in (4, 6)]


class FixedEngine:
    """Stands in for the engine on the GPU thread: a fixed step and fixed weights."""

    def __init__(self, config: Any, step: int) -> None:
        self.config, self.step = config, step

    def capture_state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "model": {"w": torch.full((4,), float(self.step))},
            "optimizer": {"state": {}, "param_groups": []},
            "config": self.config.public_dict(),
        }

    def close(self) -> None:
        pass


async def test_best_is_replaced_only_by_a_better_model(tmp_path: Path, make_config, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vsr_async.runtime.checkpointer")
    config = make_config()
    directory = tmp_path / CHECKPOINT_DIR
    directory.mkdir()
    stored = {**FixedEngine(config, 30).capture_state(), "run_id": "r"}
    write_checkpoint(directory / BEST_NAME, {**stored, "best_quality": 0.447880, "best_step": 30})
    original = (directory / BEST_NAME).read_bytes()

    worker = GpuWorker(lambda: FixedEngine(config, 12))
    await worker.start()
    store = StatsStore(run_id="r", step_max=100)
    writer = CheckpointWriter(tmp_path, worker, store, config)
    try:
        store.validation.best_quality, store.validation.best_step = 0.447833, 12
        assert await asyncio.wait_for(await writer.save_best(), 60) is None
        assert (directory / BEST_NAME).read_bytes() == original
        assert "best.pt kept: it holds quality 0.447880, this model's 0.447833" in caplog.text
        assert store.last_checkpoint is None

        store.validation.best_quality = 0.447881
        assert await asyncio.wait_for(await writer.save_best(), 60) == BEST_NAME
        best = load_checkpoint(directory / BEST_NAME)
        assert (best["best_quality"], best["step"]) == (0.447881, 12)
        store.validation.best_quality = 0.447880  # below the new one, kept in memory
        assert await asyncio.wait_for(await writer.save_best(), 60) is None
        assert load_checkpoint(directory / BEST_NAME)["best_quality"] == 0.447881
    finally:
        await writer.close()
        await worker.close()


# --- item 6: secrets -------------------------------------------------------------------------


def test_secret_keys_are_never_live() -> None:
    """Live keys go to runtime_config.json, Config/Changes and config_live: no secret may."""
    assert "WEB_TOKEN" in secret_keys()
    assert not secret_keys() & live_keys()


async def test_the_web_token_is_never_stored(make_config, tmp_path: Path) -> None:
    """No byte of the token in checkpoints, Statistik files, the log or TensorBoard events,
    also when resuming from an old checkpoint that has one stored."""
    settings = dict(WEB_TOKEN=TOKEN, SAVE_STEP_EVERY=2, VAL_STEP_EVERY=2, LOG_TBOARD_EVERY=1)
    first = await finish_run(make_config, MAX_STEPS=4, **settings)
    files = [p for p in first.run_dir.rglob("*") if p.is_file()]
    kinds = {p.parent.name if p.suffix != ".json" else "json" for p in files}
    assert {"checkpoints", "tensorboard", "json"} <= kinds
    assert (first.run_dir / "training.log").is_file()
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in json.dumps(first.store.snapshot())
    assert (
        "WEB_TOKEN"
        not in load_checkpoint(first.run_dir / CHECKPOINT_DIR / "checkpoint_4.pt")["config"]
    )

    old = load_checkpoint(first.run_dir / CHECKPOINT_DIR / checkpoint_name(4))
    old["config"] = {**old["config"], "WEB_TOKEN": TOKEN}  # as versions before this one wrote
    leaky = tmp_path / "shared" / "old.pt"
    leaky.parent.mkdir()
    write_checkpoint(leaky, old)
    shutil.rmtree(first.run_dir)
    resumed = await finish_run(make_config, resume=str(leaky), MAX_STEPS=8, **settings)
    assert resumed.store.progress.step == 8
    for path in resumed.run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_web_token_stays_out_of_a_cli_run_with_the_panel(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """The CLI with the panel on (the token in use): console, log and files never show it."""
    root = tmp_path / "Learn"
    config = cli_config(
        tmp_path / "c.toml",
        tiny_dataset,
        root,
        MAX_STEPS=4,
        SAVE_STEP_EVERY=2,
        VAL_STEP_EVERY=2,
        WEB_ENABLED=True,
        WEB_PORT=0,
        WEB_TOKEN=TOKEN,
    )
    result = run_cli("train", "--config", str(config), "--no-keyboard")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "web panel" in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "checkpoint_4.pt" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path


# --- item 10: one-line error, log order, one final checkpoint -----------------------------------


def test_resume_garbage_is_one_line(tmp_path: Path, tiny_dataset: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"garbage\n" * 10)
    config = cli_config(tmp_path / "c.toml", tiny_dataset, tmp_path / "Learn", MAX_STEPS=2)
    result = run_cli(
        "train", "--config", str(config), "--no-web", "--no-keyboard", "--resume", str(garbage)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error")]
    assert errors == [
        f"vsr_async: error: checkpoint {garbage}: cannot be loaded: not a vsr_async checkpoint, "
        "or a damaged one (no complete PyTorch archive)"
    ], result.stderr
    output = result.stdout + result.stderr
    assert "weights_only" not in output and "\x1b" not in output and "Traceback" not in output
    assert not (tmp_path / "Learn" / CHECKPOINT_DIR).exists()  # refused before the run started


def test_load_errors_carry_no_torch_advice(tmp_path: Path) -> None:
    """Whatever torch says (paragraphs on weights_only, colour codes), the message is ours."""
    cases = {
        "garbage.pt": (b"garbage\n", "not a vsr_async checkpoint"),
        "empty.pt": (b"", "the file is empty"),
        "pickle.pt": (pickle.dumps({"code": print}), "not a vsr_async checkpoint"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"checkpoint {tmp_path / name}: cannot be loaded: {reason}")
        assert "\n" not in message and "weights_only" not in message and "\x1b" not in message


async def test_log_order_and_one_final_checkpoint(make_config) -> None:
    run = await finish_run(
        make_config, MAX_STEPS=6, SAVE_STEP_EVERY=2, VAL_STEP_EVERY=3, KEEP_CHECKPOINTS=1
    )
    lines = log_lines(run.run_dir)
    events = [
        (m.group(1), m.group(2))
        for line in lines
        if (m := re.search(r"checkpoint (saved|retention: removed):? (checkpoint_\d+\.pt)", line))
    ]
    assert events == [
        ("saved", "checkpoint_2.pt"),
        ("saved", "checkpoint_4.pt"),
        ("retention: removed", "checkpoint_2.pt"),
        ("saved", "checkpoint_6.pt"),  # the scheduled save at the last step is the final one
        ("retention: removed", "checkpoint_4.pt"),
    ], events
    assert [p.name for p in (run.run_dir / CHECKPOINT_DIR).iterdir() if p.name != BEST_NAME] == [
        "checkpoint_6.pt"
    ]


async def test_a_repeated_save_writes_again_only_after_a_change(start_run) -> None:
    """Two saves at one step with nothing between are one file write (one log line); a
    validation between them changes the state, so the second save writes again."""
    run = await start_run()
    await asyncio.wait_for(run.supervisor.pause(), 60)
    first = await asyncio.wait_for(run.supervisor.save_checkpoint("a"), 60)
    again = await asyncio.wait_for(run.supervisor.save_checkpoint("b"), 60)
    assert first == again
    path = run.run_dir / CHECKPOINT_DIR / first
    assert load_checkpoint(path)["reason"] == "a"
    request = await run.supervisor.request_validation(Trigger.WEB)
    await asyncio.wait_for(request.result, 60)
    assert await asyncio.wait_for(run.supervisor.save_checkpoint("c"), 60) == first
    assert load_checkpoint(path)["reason"] == "c"
    assert load_checkpoint(path)["validation_count"] == 1
    saved = [line for line in log_lines(run.run_dir) if f"checkpoint saved: {first}" in line]
    assert len(saved) == 2, saved
