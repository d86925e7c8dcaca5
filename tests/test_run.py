"""A real run on the CPU: every validation (scheduled or requested) leaves a complete
Statistik_<step>.json holding that validation's numbers, with the snapshot's key set."""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import read_json, wait_until

from vsr_async.files.statistics import list_statistics
from vsr_async.runtime.commands import Trigger

# Every field DESIGN §3 names, literally and by its groups (the predecessor's names plus the new
# ones): a key renamed in the snapshot's definition fails here, not in a user's analysis script.
# fmt: off
DESIGN_FIELDS = (
    "step_current", "step_max", "epoch_num", "epoch_step_current", "epoch_step_total",
    "learning_rate_value", "lr_phase_name",
    "total_loss_value", "l1_loss_value", "ms_loss_value", "gradient_loss_value",
    "perceptual_loss_value",
    "l1_weight_current", "ms_weight_current", "gradient_weight_current",
    "perceptual_weight_current", "gradient_clip_val",
    "adaptive_mode", "adaptive_is_cooldown", "adaptive_cooldown_remaining",
    "adaptive_plateau_counter", "adaptive_lr_boost_available", "adaptive_perceptual_trend",
    "quality_lr_value", "quality_ki_value", "quality_improvement_value", "quality_ki_to_gt_value",
    "quality_lr_to_gt_value", "validation_loss_value", "best_quality_ever",
    "iteration_duration", "vram_usage_gb", "adam_momentum_avg", "eta_total_formatted",
    "eta_epoch_formatted",
    "layer_activity_map", "layer_activity_peak_value",
    "training_active", "validation_running", "training_paused", "last_update_time",
    "local_ip_address", "tensorboard_port",
    "schema_version", "run_id", "validation_step", "validation_trigger", "validation_count",
    "validated_at", "psnr_lr_db", "psnr_ki_db", "psnr_gain_db", "ssim_lr", "ssim_ki",
    "validation_images", "validation_duration_s", "statistics_file", "last_statistics_error",
)
# fmt: on


async def test_scheduled_and_requested_validations_each_write_their_file(start_run) -> None:
    run = await start_run(VAL_STEP_EVERY=10, LOG_TBOARD_EVERY=5)
    store, supervisor = run.store, run.supervisor
    await wait_until(lambda: store.validation.count >= 2, store)

    request = await supervisor.request_validation(Trigger.WEB)
    report = await asyncio.wait_for(request.result, 60)
    keyboard = await supervisor.request_validation(Trigger.KEYBOARD)
    keyboard_report = await asyncio.wait_for(keyboard.result, 60)

    files = dict(list_statistics(run.run_dir))
    assert {10, 20} <= set(files)
    assert report.statistics_file == f"Statistik_{report.step}.json"
    assert report.step in files and keyboard_report.step in files

    snapshot_keys = set(store.snapshot())
    for step, path in files.items():
        data = read_json(path)
        assert set(data) == snapshot_keys  # the same schema as GET /api/snapshot
        assert set(DESIGN_FIELDS) <= set(data)
        assert data["validation_step"] == data["step_current"] == step
        assert data["statistics_file"] == path.name
        assert data["validation_running"] is False
        assert 0 < data["quality_lr_value"] < 1 and 0 < data["quality_ki_value"] < 1
        assert data["total_loss_value"] > 0 and data["l1_loss_value"] > 0  # not stale zeros
        assert data["psnr_ki_db"] > 10 and 0 < data["ssim_ki"] <= 1
        assert len(data["validation_images"]) == 2
        images = data["validation_images"]
        mean_gain = sum(i["quality_ki"] - i["quality_lr"] for i in images) / len(images)
        assert abs(data["quality_improvement_value"] - mean_gain) < 1e-12
        assert data["layer_activity_map"]  # read at the logging cadence
    assert read_json(files[10])["validation_trigger"] == "schedule"
    web_file = read_json(files[report.step])
    assert web_file["validation_trigger"] == "web"
    assert web_file["quality_ki_value"] == report.metrics["quality_ki_value"]
    assert read_json(files[keyboard_report.step])["validation_trigger"] == "keyboard"
    counts = sorted(read_json(p)["validation_count"] for p in files.values())
    assert counts == sorted(set(counts))  # each file is its own validation


async def test_file_holds_that_validations_values_not_the_previous(start_run) -> None:
    """The predecessor wrote the file before the new numbers existed (quality 0.0)."""
    run = await start_run(VAL_STEP_EVERY=6, LOG_TBOARD_EVERY=3, MAX_LR=3e-3)
    await wait_until(lambda: run.store.validation.count >= 3, run.store)
    await run.supervisor.statistics.flush(30)
    seen = []
    for step, path in list_statistics(run.run_dir)[:3]:
        data = read_json(path)
        entry = next(q for q in run.store.quality_history if q["step"] == step)
        assert data["quality_ki_value"] == entry["quality_ki"]
        assert data["psnr_ki_db"] == entry["psnr_ki_db"]
        seen.append(data["quality_ki_value"])
    assert (
        len(seen) == 3 and len(set(seen)) == 3
    )  # the model changes between validations, and so do the files


async def test_pause_stops_steps_and_validation_still_runs(start_run) -> None:
    run = await start_run()
    store, supervisor = run.store, run.supervisor
    await wait_until(lambda: store.progress.step >= 3, store)
    await asyncio.wait_for(supervisor.pause(), 30)
    paused_at = store.progress.step
    request = await supervisor.request_validation(Trigger.WEB)
    report = await asyncio.wait_for(request.result, 60)
    assert report.step == paused_at == store.progress.step
    data = read_json(run.run_dir / report.statistics_file)
    assert data["training_paused"] is True
    await asyncio.wait_for(supervisor.resume(), 30)
    await wait_until(lambda: store.progress.step > paused_at, store)


async def test_stop_flushes_and_finishes(start_run, tmp_path: Path) -> None:
    run = await start_run(VAL_STEP_EVERY=4)
    await wait_until(lambda: run.store.validation.count >= 1, run.store)
    await asyncio.wait_for(run.supervisor.stop("test"), 30)
    await asyncio.wait_for(run.supervisor.finished.wait(), 60)
    assert run.store.stopped and run.store.stop_reason == "test"
    assert run.supervisor.statistics.pending_steps == []
    log_text = (run.run_dir / "training.log").read_text()
    assert "run stopped (test)" in log_text
