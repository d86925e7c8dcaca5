"""A stop during a long validation: the validation is interrupted at its next image and the run
exits within seconds with a final checkpoint; a second signal exits at once with files whole.

The validation set is made long on purpose (about ten seconds for one full pass here), so the
exit time printed below shows the interruption, not a short validation.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from helpers import CliRun, cli_config, write_patch_dataset

from vsr_async.files.checkpoints import list_checkpoints, load_checkpoint

STOP_BUDGET_S = 5.0
VALIDATION_STARTED = re.compile(r"validation started at step (\d+)")
STATISTIK_WRITTEN = re.compile(r"statistics: wrote (Statistik_\d+\.json)")


@pytest.fixture(scope="module")
def long_validation_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long-val")
    return write_patch_dataset(root / "data", train=8, val=64, val_size=360)


def config_for(tmp_path: Path, dataset: Path) -> Path:
    return cli_config(
        tmp_path / "run.toml",
        dataset,
        tmp_path / "Learn",
        VAL_STEP_EVERY=10,
        LOG_TBOARD_EVERY=5,
        SAVE_STEP_EVERY=1_000_000,
    )


async def test_sigterm_interrupts_a_running_validation(
    tmp_path: Path, long_validation_dataset: Path
) -> None:
    run = await CliRun.start(config_for(tmp_path, long_validation_dataset))
    try:
        await run.wait_for(VALIDATION_STARTED)
        statistik = await run.wait_for(STATISTIK_WRITTEN, timeout=180)  # the first one, whole
        full = json.loads((tmp_path / "Learn" / statistik.group(1)).read_text(encoding="utf-8"))
        await run.wait_for(VALIDATION_STARTED)  # the second scheduled validation
        time.sleep(0.5)  # well inside it
        sent = time.monotonic()
        run.send(signal.SIGTERM)
        code = await run.finish(timeout=60)
        exit_s = time.monotonic() - sent
    finally:
        await run.close()
    full_s = full["validation_duration_s"]
    print(f"full validation {full_s:.1f} s; exit {exit_s:.2f} s after SIGTERM during the next one")
    assert code == 0, run.output[-3000:]
    assert exit_s <= STOP_BUDGET_S, run.output[-3000:]
    assert full_s > 2 * exit_s  # the exit did not wait for a whole validation
    assert "interrupting the validation" in run.output
    assert re.search(r"validation interrupted after \d+ of 64 images", run.output)
    # The final checkpoint is on disk and complete; no Statistik file for the unfinished one.
    step, newest = list_checkpoints(tmp_path / "Learn" / "checkpoints")[0]
    assert load_checkpoint(newest)["step"] == step >= 20
    assert sorted(p.name for p in (tmp_path / "Learn").glob("Statistik_*.json")) == [
        "Statistik_10.json"
    ]


async def test_second_sigterm_exits_at_once_with_files_whole(
    tmp_path: Path, long_validation_dataset: Path
) -> None:
    run = await CliRun.start(config_for(tmp_path, long_validation_dataset))
    try:
        await run.wait_for(VALIDATION_STARTED)
        await run.wait_for(STATISTIK_WRITTEN, timeout=180)
        await run.wait_for(VALIDATION_STARTED)
        run.send(signal.SIGTERM)
        time.sleep(0.05)  # two separate deliveries (a pending signal is not queued twice)
        run.send(signal.SIGTERM)
        sent = time.monotonic()
        code = await run.finish(timeout=60)
        exit_s = time.monotonic() - sent
    finally:
        await run.close()
    print(f"second SIGTERM: exit code {code} after {exit_s:.2f} s")
    assert code == 128 + signal.SIGTERM, run.output[-3000:]
    assert "SIGTERM again: exiting now" in run.output
    run_dir = tmp_path / "Learn"
    for path in run_dir.glob("Statistik_*.json"):
        json.loads(path.read_text(encoding="utf-8"))  # whole
    for _, path in list_checkpoints(run_dir / "checkpoints"):
        load_checkpoint(path)  # whole
