"""The terminal dashboard, drawn from the snapshot of a real run's store into 80×24 (and other)
consoles: every value shown is the snapshot's, missing ones are "–", changes show up."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

from helpers import wait_until
from rich.console import Console

from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.store import StatsStore
from vsr_async.terminal.dashboard import MAX_FRAMES_PER_S, Dashboard
from vsr_async.terminal.formatting import MISSING

# The snapshot keys the dashboard shows; each one that is None shows exactly one MISSING.
SHOWN_KEYS = (
    "eta_total_formatted",
    "eta_epoch_formatted",
    "iteration_duration",
    "learning_rate_value",
    "lr_phase_name",
    "vram_usage_gb",
    "host_memory_gb",
    "gradient_clip_val",
    "total_loss_value",
    "l1_loss_value",
    "ms_loss_value",
    "gradient_loss_value",
    "perceptual_loss_value",
    "l1_weight_current",
    "ms_weight_current",
    "gradient_weight_current",
    "perceptual_weight_current",
    "adaptive_mode",
    "adaptive_is_cooldown",
    "adaptive_plateau_counter",
    "adaptive_lr_boost_available",
    "adaptive_perceptual_trend",
    "validation_trigger",
    "best_quality_ever",
    "best_quality_step",
    "quality_lr_value",
    "quality_ki_value",
    "quality_improvement_value",
    "psnr_lr_db",
    "psnr_ki_db",
    "psnr_gain_db",
    "ssim_lr",
    "ssim_ki",
    "last_statistics_written",
    "last_checkpoint",
    "global_batch",
)


def draw(dashboard: Dashboard, snapshot: dict[str, Any], width: int = 80, height: int = 24) -> str:
    console = Console(
        width=width, height=height, record=True, force_terminal=True, file=io.StringIO()
    )
    console.print(dashboard.render(snapshot))
    text = console.export_text(clear=False)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height, text
    assert all(len(line) <= width for line in lines), text
    return text


async def test_dashboard_shows_the_snapshot_of_a_real_run(start_run) -> None:
    run = await start_run(LOG_TBOARD_EVERY=2)
    store, supervisor = run.store, run.supervisor
    await wait_until(lambda: store.stats is not None, store)
    request = await supervisor.request_validation(Trigger.KEYBOARD)
    await asyncio.wait_for(request.result, 60)
    assert await asyncio.wait_for(supervisor.pause(), 30) == "paused"
    await wait_until(lambda: store.last_checkpoint is not None, store)  # best.pt, written behind
    dashboard = Dashboard(store, run.config)
    snap = store.snapshot()
    text = draw(dashboard, snap)

    expected = [
        f"{snap['step_current']:,}/{snap['step_max']:,}",
        f"ETA {snap['eta_total_formatted']}",
        f"epoch {snap['epoch_num']} · {snap['epoch_step_current']}/{snap['epoch_step_total']}",
        f"{1 / snap['iteration_duration']:.2f} it/s · {snap['iteration_duration']:.3f} s/it",
        f"LR {snap['learning_rate_value']:.2e} ({snap['lr_phase_name']})",
        f"RAM {snap['host_memory_gb']:.2f} GB",
        f"{snap['total_loss_value']:.5f}",
        f"{snap['gradient_loss_value']:.5f}",
        f"adaptive {snap['adaptive_mode']}",
        f"validation #{snap['validation_count']} at step {snap['validation_step']:,} (keyboard)",
        f"quality LR {snap['quality_lr_value'] * 100:.2f}%",
        f"output {snap['quality_ki_value'] * 100:.2f}%",
        f"improvement {snap['quality_improvement_value'] * 100:+.2f}%",
        f"PSNR {snap['psnr_lr_db']:.2f} → {snap['psnr_ki_db']:.2f} dB",
        f"SSIM {snap['ssim_lr']:.4f} → {snap['ssim_ki']:.4f}",
        f"stats {snap['last_statistics_written']}",
        f"ckpt {snap['last_checkpoint']}",
        "PAUSED",
        "panel off",
        f"global batch {snap['global_batch']}",
    ]
    for name, value in snap["layer_activity_map"].items():
        expected += [name, f"{value:.4g}"]
    assert [e for e in expected if e not in text] == [], text
    assert "N/A" not in text and "ranks" not in text  # one rank: no rank count
    assert text.count(MISSING) == sum(snap[key] is None for key in SHOWN_KEYS), text

    # the store changes -> the drawing changes
    store.set_pending_commands(["RunValidation"])
    store.statistics_failed("No space left on device")
    changed = draw(dashboard, store.snapshot())
    assert "queued RunValidation" in changed
    assert "statistics write failed: No space left on device" in changed
    step = snap["step_current"]
    store.set_pending_commands([])
    assert await asyncio.wait_for(supervisor.resume(), 30) == "running"
    await wait_until(lambda: store.progress.step >= step + 2, store)
    later = draw(dashboard, store.snapshot())
    assert f"step {store.progress.step:,}/" in later and "RUNNING" in later

    # other sizes, the help overlay and the other view draw too, never wider or taller
    for width, height in ((60, 16), (120, 40), (40, 10)):
        draw(dashboard, store.snapshot(), width, height)
    dashboard.toggle_help()
    assert "q      stop training" in draw(dashboard, store.snapshot())
    dashboard.toggle_help()
    dashboard.switch_view()
    assert "sorted by activity" in draw(dashboard, store.snapshot())


def test_values_that_do_not_exist_yet_are_dashes_not_constants() -> None:
    store = StatsStore(run_id="r1", step_max=100)
    config = type("Cfg", (), {"WEB_ENABLED": True, "WEB_HOST": "127.0.0.1", "WEB_PORT": 5050})
    text = draw(Dashboard(store, config), store.snapshot())
    assert "ETA –" in text and "LR – (–)" in text and "speed –" in text
    assert "0.00000" not in text and "N/A" not in text
    assert "validation none yet" in text
    assert "panel http://127.0.0.1:5050" in text
    assert "STARTING" in text
    assert "global batch –" in text and "ranks" not in text  # before the engine's facts
    store.set_extra(web_url="http://127.0.0.1:41234/")
    assert "panel http://127.0.0.1:41234/" in draw(Dashboard(store, config), store.snapshot())
    # A generated token reaches the terminal through the panel, never through the store.
    dashboard = Dashboard(store, config)
    dashboard.panel_link = lambda: "http://vm:5050/?token=abc123"
    assert "panel http://vm:5050/?token=abc123" in draw(dashboard, store.snapshot())
    assert "abc123" not in str(store.snapshot())


async def test_dashboard_service_redraws_on_changes_at_most_4_per_second(start_run) -> None:
    run = await start_run()
    console = Console(width=80, height=24, record=True, force_terminal=True, file=io.StringIO())
    dashboard = Dashboard(run.store, run.config, console=console, screen=False)
    await dashboard.start()
    try:
        started, first = time.monotonic(), dashboard.frames_drawn
        await wait_until(lambda: dashboard.frames_drawn >= first + 4, run.store, timeout=30)
        elapsed = time.monotonic() - started
        assert dashboard.frames_drawn - first <= elapsed * MAX_FRAMES_PER_S + 1
        dashboard.notify("hello from the keyboard")
        await wait_until(
            lambda: "hello from the keyboard" in console.export_text(clear=False), run.store
        )
    finally:
        await dashboard.stop()
    assert "Traceback" not in console.export_text(clear=False)


def test_a_torchrun_jobs_ranks_and_global_batch_are_in_the_header() -> None:
    store = StatsStore(run_id="20261201-030732-abcdef", step_max=100)
    config = type("Cfg", (), {"WEB_ENABLED": False, "WEB_HOST": "127.0.0.1", "WEB_PORT": 5050})
    store.set_extra(world_size=2, global_batch=8)  # as the supervisor hands the engine's facts
    header = draw(Dashboard(store, config), store.snapshot()).split("\n")[0]
    assert header.endswith("STARTING  ranks 2 · global batch 8"), header
    store.set_extra(world_size=1, global_batch=1024)
    header = draw(Dashboard(store, config), store.snapshot()).split("\n")[0]
    assert header.endswith("STARTING  global batch 1,024"), header
