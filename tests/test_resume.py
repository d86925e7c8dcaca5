"""Resume: a run stopped by SIGTERM and continued with `--resume auto` is bit-identical to one
that never stopped; damaged, foreign-shape and missing checkpoints are clear errors or warnings;
`--resume never` keeps every earlier file.

The CLI runs are real child processes with one intra-op thread each (the same thread count for
the straight and the resumed run, so CPU reductions add in the same order).
"""

from __future__ import annotations

import asyncio
import re
import signal
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CONTINUING, LOG_STEP, CliRun, cli_config, finish_run, read_json, wait_until

from vsr_async.errors import CheckpointError
from vsr_async.files.checkpoints import (
    CHECKPOINT_DIR,
    check_compatible,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
)
from vsr_async.runtime.launch import build_run, scan_async
from vsr_async.runtime.run_folder import fresh_run_dir
from vsr_async.settings import Config


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# --- exact resume --------------------------------------------------------------------------------


async def run_straight(config_file: Path) -> int:
    run = await CliRun.start(config_file, "--resume", "never")
    try:
        return await run.finish(240)
    finally:
        await run.close()


async def run_interrupted(config_file: Path, stop_after: int) -> tuple[int, int]:
    """Run until the log shows step >= stop_after, SIGTERM; returns (exit code, final step)."""
    run = await CliRun.start(config_file, "--resume", "never")
    try:
        while int((await run.wait_for(LOG_STEP, timeout=180)).group(1)) < stop_after:
            pass
        run.send(signal.SIGTERM)
        code = await run.finish(120)
    finally:
        await run.close()
    saved = re.findall(r"checkpoint saved: checkpoint_(\d+)\.pt", run.output)
    assert "SIGTERM received" in run.output, run.output[-3000:]
    return code, int(saved[-1])


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(dict(NUM_WORKERS=0), id="workers0"),
        pytest.param(dict(NUM_WORKERS=1, EMA_DECAY=0.9, ACCUMULATION_STEPS=2), id="workers1-ema"),
    ],
)
async def test_sigterm_then_resume_auto_is_exact(
    tmp_path: Path, tiny_dataset: Path, extra: dict[str, Any]
) -> None:
    """Done-when 1: 2N straight == N, SIGTERM, --resume auto, on to 2N (PSNR and weights)."""
    n = 40
    settings = dict(MAX_STEPS=2 * n, VAL_STEP_EVERY=2 * n, LOG_TBOARD_EVERY=5, **extra)
    straight_root, split_root = tmp_path / "straight", tmp_path / "split"
    straight = cli_config(tmp_path / "straight.toml", tiny_dataset, straight_root, **settings)
    split = cli_config(tmp_path / "split.toml", tiny_dataset, split_root, **settings)

    straight_task = asyncio.create_task(run_straight(straight))  # in parallel with the split run
    try:
        code, stopped_at = await run_interrupted(split, stop_after=n)
        assert code == 0
        assert n <= stopped_at < 2 * n, "the run finished before SIGTERM took effect"
        stopped_ckpt = split_root / CHECKPOINT_DIR / checkpoint_name(stopped_at)
        assert load_checkpoint(stopped_ckpt)["reason"] == "shutdown"

        resumed = await CliRun.start(split, "--resume", "auto")
        try:
            match = await resumed.wait_for(CONTINUING)
            assert Path(match.group(1)) == stopped_ckpt and int(match.group(2)) == stopped_at
            assert await resumed.finish(240) == 0
        finally:
            await resumed.close()
    finally:
        assert await straight_task == 0

    a = read_json(straight_root / f"Statistik_{2 * n}.json")
    b = read_json(split_root / f"Statistik_{2 * n}.json")
    assert abs(a["psnr_ki_db"] - b["psnr_ki_db"]) < 1e-6
    assert a["quality_ki_value"] == b["quality_ki_value"]
    assert a["total_loss_value"] == b["total_loss_value"]  # the logging window was resumed too
    assert b["run_id"] == load_checkpoint(stopped_ckpt)["run_id"]  # one run, continued

    final = checkpoint_name(2 * n)
    wa = model_tensors(straight_root / CHECKPOINT_DIR / final)
    wb = model_tensors(split_root / CHECKPOINT_DIR / final)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    at_stop = model_tensors(stopped_ckpt)
    assert any(not torch.equal(at_stop[k], wb[k]) for k in wb)  # the resumed run did train
    if extra.get("EMA_DECAY"):
        ea = load_checkpoint(straight_root / CHECKPOINT_DIR / final)["ema"]
        eb = load_checkpoint(split_root / CHECKPOINT_DIR / final)["ema"]
        assert all(torch.equal(ea[k], eb[k]) for k in ea)
        assert b["validation_used_ema"] is True


# --- damaged, foreign and missing checkpoints ---------------------------------------------------


async def test_truncated_newest_is_skipped_with_a_warning(make_config, tmp_path: Path) -> None:
    """Done-when 3: the damaged newest is named in a warning, the one before it is used."""
    first = await finish_run(make_config, MAX_STEPS=8, SAVE_STEP_EVERY=4)
    directory = first.run_dir / CHECKPOINT_DIR
    assert [s for s, _ in list_checkpoints(directory)] == [8, 4]
    newest = directory / checkpoint_name(8)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    second = await finish_run(make_config, MAX_STEPS=10, SAVE_STEP_EVERY=4)
    log_text = (second.run_dir / "training.log").read_text()
    warning = next(line for line in log_text.splitlines() if "skipping damaged" in line)
    assert "WARNING" in warning and str(newest) in warning
    assert f"continuing from {directory / checkpoint_name(4)} (step 4)" in log_text
    assert second.store.progress.step == 10
    for _, path in list_checkpoints(directory):
        load_checkpoint(path)  # the truncated file was replaced by a complete step-8 one


async def test_other_model_shape_is_refused_naming_the_keys(
    make_config, tmp_path: Path, tiny_dataset: Path
) -> None:
    """Done-when 3, from the command line: exit 1, one error line naming N_FEATS and N_BLOCKS."""
    first = await finish_run(make_config, MAX_STEPS=2)
    data_root = first.run_dir
    config = cli_config(tmp_path / "c.toml", tiny_dataset, data_root, MAX_STEPS=2)
    before = {p.name: p.read_bytes() for p in (data_root / CHECKPOINT_DIR).iterdir()}

    refused = await CliRun.start(config, "--set", "N_FEATS=12", "--set", "N_BLOCKS=4")
    try:
        assert await refused.finish() == 1
    finally:
        await refused.close()
    errors = [line for line in refused.lines if line.startswith("vsr_async: error")]
    assert len(errors) == 1, refused.output
    assert errors[0].startswith(f"vsr_async: error: checkpoint {data_root / CHECKPOINT_DIR}")
    assert "N_FEATS=8 (config has 12)" in errors[0] and "N_BLOCKS=2 (config has 4)" in errors[0]
    assert "NUM_FRAMES" not in errors[0] and "Traceback" not in refused.output
    assert {p.name: p.read_bytes() for p in (data_root / CHECKPOINT_DIR).iterdir()} == before


def test_shape_check_names_frames_and_scale(make_config) -> None:
    """NUM_FRAMES and SCALE also fix the shape (the CLI stops earlier on the dataset for them)."""
    config: Config = make_config()
    state = {"config": {**config.to_dict(), "NUM_FRAMES": 5, "SCALE": 4}}
    with pytest.raises(CheckpointError) as err:
        check_compatible(state, config, Path("old.pt"))
    message = str(err.value)
    assert "NUM_FRAMES=5 (config has 3)" in message and "SCALE=4 (config has 3)" in message
    assert "N_FEATS" not in message and "\n" not in message
    check_compatible({"config": config.to_dict()}, config, Path("same.pt"))  # same shape: fine


async def test_resume_path_errors_are_clear(make_config, tmp_path: Path) -> None:
    """--resume PATH: a missing file and a file that is no checkpoint both name the path."""
    config = make_config()
    info = await scan_async(config)
    missing = tmp_path / "nowhere" / "checkpoint_5.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"{missing}: no such file")):
        build_run(config, info, resume=str(missing), console_log=False)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")  # refused before the run starts (no archive)
    with pytest.raises(CheckpointError, match=re.escape(f"{junk}: cannot be loaded: not a")):
        build_run(config, info, resume=str(junk), console_log=False)

    archive = tmp_path / "archive.pt"  # an archive, but not PyTorch's: the full load refuses it
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes.txt", "hello")
    run = build_run(config, info, resume=str(archive), console_log=False)
    with pytest.raises(CheckpointError, match=re.escape(f"{archive}: cannot be loaded")):
        await asyncio.wait_for(run.execute(), 120)


async def test_resume_path_takes_that_file(make_config) -> None:
    first = await finish_run(make_config, MAX_STEPS=6, SAVE_STEP_EVERY=3)
    older = first.run_dir / CHECKPOINT_DIR / checkpoint_name(3)
    second = await finish_run(make_config, resume=str(older), MAX_STEPS=7)
    assert f"continuing from {older} (step 3)" in (second.run_dir / "training.log").read_text()
    assert second.store.progress.step == 7 and second.store.run_id == first.store.run_id


async def test_resume_never_starts_beside_the_old_run_and_deletes_nothing(
    make_config, tmp_path: Path
) -> None:
    old = await finish_run(make_config, MAX_STEPS=4, VAL_STEP_EVERY=4)
    before = {p: p.read_bytes() for p in old.run_dir.rglob("*") if p.is_file()}
    assert any(p.name == "Statistik_4.json" for p in before)

    fresh = await finish_run(make_config, resume="never", MAX_STEPS=4, VAL_STEP_EVERY=4)
    assert fresh.run_dir != old.run_dir and fresh.run_dir.parent == old.run_dir.parent
    assert fresh.store.run_id != old.store.run_id
    assert "continuing from" not in (fresh.run_dir / "training.log").read_text()
    for path, data in before.items():
        if path.name != "training.log":  # (the old log is the only file a new start may append)
            assert path.read_bytes() == data, path
    assert (fresh.run_dir / "Statistik_4.json").is_file()


def test_fresh_starts_in_the_same_second_get_their_own_directories(make_config) -> None:
    config = make_config()
    base = Path(config.DATA_ROOT)
    (base / CHECKPOINT_DIR).mkdir(parents=True)
    (base / "Statistik_1.json").write_text("{}")
    first = Path(fresh_run_dir(config).DATA_ROOT)
    (first / CHECKPOINT_DIR).mkdir(parents=True)
    (first / "Statistik_1.json").write_text("{}")  # the first fresh run has begun writing
    second = Path(fresh_run_dir(config).DATA_ROOT)
    assert len({base, first, second}) == 3 and first.parent == second.parent == base.parent
    assert (first / "Statistik_1.json").read_text() == "{}"


async def test_resume_auto_keeps_counting_validations_and_best(start_run) -> None:
    """The resumed store continues run id, step, validation count and best quality."""
    run = await start_run(VAL_STEP_EVERY=3)
    await wait_until(lambda: run.store.validation.count >= 2, run.store)
    await asyncio.wait_for(run.supervisor.stop("test"), 30)
    await asyncio.wait_for(run.supervisor.finished.wait(), 60)
    before = run.store.snapshot()

    again = await start_run(VAL_STEP_EVERY=3)
    after = again.store.snapshot()
    assert after["run_id"] == before["run_id"]
    assert after["step_current"] == before["step_current"]
    assert after["validation_count"] == before["validation_count"]
    assert after["best_quality_ever"] == before["best_quality_ever"]
