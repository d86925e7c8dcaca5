"""Statistik files the predecessor's readers can read (issue 12): every key its
`Statistik_<step>.json` held, with its JSON type and meaning, in a file written by a real run here
— also by a validation before the first logging step, which must hold real numbers, not null.

The reference is built from PREDECESSOR.md §9.3/§12 (its `get_complete_snapshot()` fields).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from datetime import datetime
from typing import Any

import pytest
from helpers import read_json, wait_until

from vsr_async.files.statistics import list_statistics
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.host_address import local_ip_address
from vsr_async.runtime.snapshot import SNAPSHOT_KEYS
from vsr_async.runtime.snapshot_values import predecessor_activity_name

INT, FLOAT, STR, BOOL, DICT = "int", "float", "str", "bool", "dict"

# The predecessor's keys and the JSON type its files had (PREDECESSOR.md §9.3).
# fmt: off
PREDECESSOR_STATISTIK: dict[str, str] = {
    "step_current": INT, "epoch_num": INT, "step_max": INT,
    "epoch_step_current": INT, "epoch_step_total": INT,
    "total_loss_value": FLOAT, "l1_loss_value": FLOAT, "ms_loss_value": FLOAT,
    "gradient_loss_value": FLOAT, "perceptual_loss_value": FLOAT,
    "l1_weight_current": FLOAT, "ms_weight_current": FLOAT, "gradient_weight_current": FLOAT,
    "perceptual_weight_current": FLOAT, "gradient_clip_val": FLOAT,
    "adaptive_mode": STR, "adaptive_is_cooldown": BOOL, "adaptive_cooldown_remaining": INT,
    "adaptive_plateau_counter": FLOAT,  # int or x.5: a number
    "adaptive_lr_boost_available": BOOL,
    "adaptive_perceptual_trend": FLOAT,  # it wrote int 0 (a TODO); a number either way
    "learning_rate_value": FLOAT, "lr_phase_name": STR,
    "iteration_duration": FLOAT, "vram_usage_gb": FLOAT, "adam_momentum_avg": FLOAT,
    "eta_total_formatted": STR, "eta_epoch_formatted": STR,
    "quality_lr_value": FLOAT, "quality_ki_value": FLOAT, "quality_improvement_value": FLOAT,
    "quality_ki_to_gt_value": FLOAT, "quality_lr_to_gt_value": FLOAT,
    "validation_loss_value": FLOAT, "best_quality_ever": FLOAT,
    "layer_activity_map": DICT, "layer_activity_peak_value": FLOAT,
    "training_active": BOOL, "validation_running": BOOL, "training_paused": BOOL,
    "local_ip_address": STR, "tensorboard_port": INT, "last_update_time": FLOAT,
}
# fmt: on
# Null where the predecessor's value was wrong (docs/design.md "Store and Statistik files"):
# no TensorBoard served (it wrote 6006 regardless); no GPU (it required CUDA).
MAY_BE_NULL = {"tensorboard_port", "vram_usage_gb"}

# layer_activity_map entries for N_BLOCKS 2: ours by block, the predecessor's (MODEL vsrpp) as
# its files named them, the two fusion entries included.
ACTIVITY_NAMES = {
    "vsrnet": {"Backward_Block_01", "Forward_Block_01", "Final_Fusion"},
    "vsrpp": {"Backward 1", "Backward Fuse", "Forward 1", "Forward Fuse", "Final Fusion"},
}


def json_type_ok(value: Any, kind: str) -> bool:
    """Whether a reader expecting the predecessor's type can use this value as before."""
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:  # a JSON number: Python reads 2 as int, 2.0 as float; both do arithmetic
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {STR: str, BOOL: bool, DICT: dict}[kind])


def test_reference_keys_are_in_the_snapshot_definition() -> None:
    assert set(PREDECESSOR_STATISTIK) <= set(SNAPSHOT_KEYS)
    assert "last_update_iso" in SNAPSHOT_KEYS  # the ISO copy of last_update_time


def test_predecessor_activity_names() -> None:
    assert predecessor_activity_name("Backward_Block_01") == "Backward 1"
    assert predecessor_activity_name("Forward_Block_12") == "Forward 12"
    assert predecessor_activity_name("Backward_Fuse") == "Backward Fuse"
    assert predecessor_activity_name("Forward_Fuse") == "Forward Fuse"
    assert predecessor_activity_name("Final_Fusion") == "Final Fusion"


@pytest.mark.parametrize("model", ["vsrnet", "vsrpp"])
async def test_statistik_files_pass_the_predecessor_key_and_type_comparison(
    start_run, model: str
) -> None:
    started = time.time()
    run = await start_run(MODEL=model, LOG_TBOARD_EVERY=20, VAL_STEP_EVERY=25)
    store, supervisor = run.store, run.supervisor
    await wait_until(lambda: store.progress.step >= 1, store)
    early = await supervisor.request_validation(Trigger.WEB)  # before the first logging step
    early_report = await asyncio.wait_for(early.result, 60)
    # the scheduled validation at step 25, after the first logging step (20), on disk
    await wait_until(lambda: store.last_statistics_written == "Statistik_25.json", store)
    files = dict(list_statistics(run.run_dir))
    assert early_report.step < 20 and 25 in files, sorted(files)

    for step, path in files.items():
        data = read_json(path)
        wrong = {
            key: data.get(key, "<missing>")
            for key, kind in PREDECESSOR_STATISTIK.items()
            if not (key in MAY_BE_NULL and data.get(key) is None)
            and not json_type_ok(data.get(key), kind)
        }
        assert not wrong, f"Statistik_{step}.json: {wrong}"
        # meanings: epoch from 1, Unix seconds (and the ISO copy), the LAN address
        assert data["epoch_num"] >= 1
        assert started <= data["last_update_time"] <= time.time()
        iso = datetime.fromisoformat(data["last_update_iso"].replace("Z", "+00:00"))
        assert abs(iso.timestamp() - data["last_update_time"]) < 1
        assert data["local_ip_address"] == local_ip_address()
        ipaddress.ip_address(data["local_ip_address"])
        assert set(data["layer_activity_map"]) == ACTIVITY_NAMES[model]
        assert data["layer_activity_peak_value"] == max(data["layer_activity_map"].values())
        assert data["total_loss_value"] > 0 and data["l1_loss_value"] > 0
        assert data["l1_weight_current"] > 0 and data["gradient_clip_val"] > 0
        assert data["adaptive_mode"] in {"Warmup", "Settling", "Stable", "Aggressive"}
        # the phase and the flag agree: a file is written once the validation is done
        assert data["validation_running"] is False and data["run_phase"] != "validating"
    early_file = read_json(files[early_report.step])
    assert early_file["step_current"] == early_report.step < 20  # before any logging step
