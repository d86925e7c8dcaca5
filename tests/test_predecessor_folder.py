"""A predecessor (VSR++) Learn folder as DATA_ROOT: recognised, continued by `--resume auto`
from its newest checkpoint (MODEL "vsrpp"), or left for a fresh start by `--resume never` —
either way in a new sibling folder, with no byte of its own folder changed or added.

The folder is built in its exact formats: `checkpoint_step_0000005.pth` as its
CheckpointManager writes it (see test_vsrpp.py), `Statistik_5.json` with its keys, and its
lowercase `runtime_config.json`. Also: KEEP_CHECKPOINTS = 0 keeps every checkpoint, and
`python -m vsr_async checkpoints` lists ours and its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CONTINUING, cli_config, finish_run, run_cli
from test_vsrpp import VSRPP, hashes, predecessor_modules, write_predecessor_checkpoint

from vsr_async.files.checkpoints import CHECKPOINT_DIR, list_checkpoints, retention_victims

__all__ = ["predecessor_modules"]  # the fixture, used by name below

STATISTIK = {
    "step_current": 5,
    "epoch_num": 1,
    "total_loss_value": 0.0412,
    "quality_ki_value": 0.612,
    "last_update_time": 1770498843.5,
    "training_active": True,
}
RUNTIME = {"plateau_patience": 300, "max_lr": 0.0001, "min_lr": 1e-06, "ema_decay": 0.999}


@pytest.fixture
def old_learn(tmp_path: Path, predecessor_modules: type) -> Path:
    folder = tmp_path / "Learn"
    write_predecessor_checkpoint(
        folder / "checkpoint_step_0000005.pth", predecessor_modules, step=5
    )
    (folder / "Statistik_5.json").write_text(json.dumps(STATISTIK, indent=2), encoding="utf-8")
    (folder / "runtime_config.json").write_text(json.dumps(RUNTIME), encoding="utf-8")
    return folder


def siblings(folder: Path) -> list[Path]:
    return sorted(p for p in folder.parent.iterdir() if p.name.startswith(f"{folder.name}-"))


def train(tmp_path: Path, dataset: Path, folder: Path, resume: str, **settings: object):
    config = cli_config(tmp_path / "run.toml", dataset, folder, **{**VSRPP, **settings})
    return run_cli("train", "--config", str(config), "--no-web", "--resume", resume)


def test_auto_continues_its_newest_checkpoint_in_a_sibling(
    tmp_path: Path, tiny_dataset: Path, old_learn: Path
) -> None:
    before = hashes(old_learn)
    result = train(tmp_path, tiny_dataset, old_learn, "auto", MAX_STEPS=7)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "is a VSR++ (predecessor) Learn folder" in output
    match = CONTINUING.search(output)
    assert match and match.group(2) == "5", output[-3000:]
    assert hashes(old_learn) == before  # nothing changed, nothing added, nothing deleted
    [sibling] = siblings(old_learn)
    [(step, _)] = list_checkpoints(sibling / CHECKPOINT_DIR)
    assert step == 7  # continued at 5, two steps here

    # the checkpoints command lists both folders' files by step
    listed = run_cli("checkpoints", str(old_learn))
    assert listed.returncode == 0, listed.stderr
    assert "checkpoint_step_0000005.pth" in listed.stdout and "61.20%" in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if ".pth" in line)
    assert row.split()[0] == "5" and "VSR++" in row
    ours = run_cli("checkpoints", "--config", str(tmp_path / "run.toml"))
    assert "checkpoint_step_0000005.pth" in ours.stdout  # the config's DATA_ROOT: its folder
    mine = run_cli("checkpoints", str(sibling))
    row = next(line for line in mine.stdout.splitlines() if "checkpoint_7.pt" in line)
    assert row.split()[:2] == ["7", "final"]
    assert hashes(old_learn) == before


def test_never_starts_fresh_in_a_sibling(
    tmp_path: Path, tiny_dataset: Path, old_learn: Path
) -> None:
    before = hashes(old_learn)
    result = train(tmp_path, tiny_dataset, old_learn, "never", MAX_STEPS=2)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not CONTINUING.search(output)
    assert hashes(old_learn) == before
    [sibling] = siblings(old_learn)
    [(step, _)] = list_checkpoints(sibling / CHECKPOINT_DIR)
    assert step == 2


def test_auto_needs_model_vsrpp(tmp_path: Path, tiny_dataset: Path, old_learn: Path) -> None:
    before = hashes(old_learn)
    result = train(tmp_path, tiny_dataset, old_learn, "auto", MODEL="vsrnet", MAX_STEPS=2)

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "MODEL" in line and 'set MODEL = "vsrpp"' in line and "--resume never" in line
    assert hashes(old_learn) == before and siblings(old_learn) == []


async def test_keep_checkpoints_zero_keeps_every_one(make_config) -> None:
    assert retention_victims({"a": 1, "b": 2, "c": 3}, 0, "c") == []
    assert retention_victims({"a": 1, "b": 2, "c": 3}, 1, "c") == ["b", "a"]
    run = await finish_run(make_config, MAX_STEPS=4, SAVE_STEP_EVERY=1, KEEP_CHECKPOINTS=0)
    steps = [step for step, _ in list_checkpoints(run.run_dir / CHECKPOINT_DIR)]
    assert steps == [4, 3, 2, 1]
