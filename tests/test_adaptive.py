"""The adaptive system driven through synthetic sharpness, loss, quality and gradient-norm
sequences, as the engine drives it: record_step every step, update at the logging cadence."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vsr_async.records import AdaptiveReport, LossWeights
from vsr_async.settings import build_config
from vsr_async.training.adaptive import MIN_CLIP_SAMPLES, AdaptiveSystem
from vsr_async.training.adaptive_clip import AdaptiveClip
from vsr_async.training.adaptive_weights import AdaptiveWeights
from vsr_async.training.schedule import LRSchedule

CADENCE = 10  # the engine's LOG_TBOARD_EVERY in these tests

# Short horizons so that every rule fires within a few hundred steps.
BASE: dict[str, Any] = {
    "WARMUP_STEPS": 100,
    "MAX_STEPS": 100_000,
    "MAX_LR": 1e-3,
    "MIN_LR": 1e-5,
    "L1_WEIGHT": 1.0,
    "MS_WEIGHT": 0.2,
    "GRAD_WEIGHT": 0.1,
    "INITIAL_GRAD_CLIP": 1.5,
    "ADAPTIVE_SETTLING_STEPS": 50,
    "ADAPTIVE_RESUME_SETTLING_STEPS": 30,
    "ADAPTIVE_WINDOW_STEPS": 50,
    "ADAPTIVE_SHARPNESS_TOLERANCE": 0.05,
    "ADAPTIVE_WEIGHT_MAX_STEP": 0.1,
    "ADAPTIVE_WEIGHT_COOLDOWN_STEPS": 100,
    "ADAPTIVE_WEIGHT_FLOOR": 0.25,
    "ADAPTIVE_WEIGHT_CEILING": 2.0,
    "ADAPTIVE_L1_FLOOR": 0.5,
    "ADAPTIVE_PLATEAU_THRESHOLD": 0.01,
    "ADAPTIVE_PLATEAU_PATIENCE_STEPS": 200,
    "ADAPTIVE_QUALITY_MIN_GAIN": 1e-3,
    "ADAPTIVE_QUALITY_PATIENCE": 2,
    "ADAPTIVE_LR_BOOST_FACTOR": 3.0,
    "ADAPTIVE_LR_BOOST_STEPS": 50,
    "ADAPTIVE_LR_BOOST_COOLDOWN_STEPS": 150,
    "ADAPTIVE_RESET_STEPS": 600,
    "ADAPTIVE_CLIP_PERCENTILE": 95.0,
    "ADAPTIVE_CLIP_MARGIN": 1.5,
    "ADAPTIVE_CLIP_MIN": 0.01,
    "ADAPTIVE_CLIP_MAX": 100.0,
    "ADAPTIVE_CLIP_HISTORY": 200,
}

Value = float | bool | Callable[[int], Any]


def improving(step: int) -> float:
    """A smoothed loss that drops ~2 % per update: never a plateau."""
    return math.exp(-step / 500)


def flat_after(start: int) -> Callable[[int], float]:
    """Improving until `start`, flat from then on (a plateau from `start`)."""
    return lambda step: improving(min(step, start))


def make(**overrides: Any) -> tuple[AdaptiveSystem, LRSchedule]:
    config = build_config({**BASE, **overrides})
    schedule = LRSchedule.from_config(config)
    return AdaptiveSystem(config, schedule, "cpu"), schedule


def value_at(value: Value, step: int) -> Any:
    return value(step) if callable(value) else value


class Driver:
    """Feeds the system as the engine does; the schedule sets an optimizer's LR every step."""

    def __init__(self, system: AdaptiveSystem, schedule: LRSchedule, step: int = 0) -> None:
        self.system, self.schedule, self.step = system, schedule, step
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        self.lrs: dict[int, float] = {}  # optimizer LR used by step index
        self.updates: list[tuple[int, LossWeights, float, AdaptiveReport]] = []

    def run(
        self,
        steps: int,
        *,
        loss: Value = improving,
        sharpness: Value = 1.0,
        grad_norm: Value = 1.0,
        finite: Value = True,
        perceptual: Value = 0.0,
    ) -> None:
        for _ in range(steps):
            index = self.step
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(index)
            self.lrs[index] = self.optimizer.param_groups[0]["lr"]
            self.system.record_step(
                torch.tensor(float(value_at(grad_norm, index))),
                torch.tensor(float(value_at(sharpness, index))),
                torch.tensor(bool(value_at(finite, index))),
            )
            self.step += 1
            if self.step % CADENCE == 0:
                s = self.step
                self.system.update(s, value_at(loss, s), value_at(perceptual, s))
                self.updates.append(
                    (s, self.system.weights, self.system.grad_clip, self.system.report())
                )

    def modes(self) -> dict[int, str]:
        return {step: report.mode for step, _, _, report in self.updates}

    def weight_changes(self) -> list[tuple[int, LossWeights, LossWeights]]:
        changes, before = [], LossWeights.from_config(self.system.config)
        for step, weights, _, _ in self.updates:
            if weights != before:
                changes.append((step, before, weights))
            before = weights
        return changes


def events_with(system: AdaptiveSystem, text: str) -> list[str]:
    return [e for e in system.events if text in e]


# --- modes ---------------------------------------------------------------------------------------


def test_modes_warmup_settling_stable_aggressive_stable() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    assert system.report().mode == "Warmup"
    # improving to step 300, flat until 600, improving again after
    loss = lambda s: improving(s if s < 300 else (300 if s < 600 else s - 300))  # noqa: E731
    drive.run(800, loss=loss)
    modes = drive.modes()
    assert modes[90] == "Warmup"
    assert modes[100] == modes[140] == "Settling"  # WARMUP_STEPS + ADAPTIVE_SETTLING_STEPS
    assert modes[150] == modes[490] == "Stable"
    assert modes[500] == modes[600] == "Aggressive"  # best at 300, patience 200
    assert modes[610] == modes[800] == "Stable"  # a new best: progress resumed
    assert [e.split(": ", 1)[1] for e in events_with(system, "mode")] == [
        "mode Warmup -> Settling",
        "mode Settling -> Stable",
        "mode Stable -> Aggressive",
        "mode Aggressive -> Stable",
    ]


def test_plateau_counter_counts_observations_and_resets_on_progress() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    loss = lambda s: improving(s if s < 300 else (300 if s < 600 else s - 300))  # noqa: E731
    drive.run(800, loss=loss)
    counters = {step: report.plateau_counter for step, _, _, report in drive.updates}
    assert counters[490] == 0
    assert [counters[s] for s in (500, 510, 520, 600)] == [1, 2, 3, 11]
    assert counters[610] == 0
    assert events_with(system, "progress resumed after 11 plateau updates")


def test_resume_enters_settling_and_waits_before_deciding() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(300)
    assert system.report().mode == "Stable"
    system.on_resume(300)
    assert system.report().mode == "Settling"
    drive.run(60, sharpness=0.5)  # blurry, but Settling holds the weights
    modes = drive.modes()
    assert modes[320] == "Settling" and modes[330] == "Stable"  # RESUME_SETTLING 30
    assert [step for step, _, _ in drive.weight_changes()] == [330]


def test_quality_plateau_enters_aggressive_and_a_new_best_leaves_it() -> None:
    system, schedule = make(ADAPTIVE_LR_BOOST_FACTOR=1.0)
    drive = Driver(system, schedule)
    drive.run(200)
    system.on_validation(200, 0.50)  # first validation: a new best
    drive.run(10)
    system.on_validation(210, 0.5005)  # below ADAPTIVE_QUALITY_MIN_GAIN: no new best
    drive.run(10)
    assert system.report().mode == "Stable"
    system.on_validation(220, 0.49)  # second in a row without a new best: plateau
    drive.run(10)
    assert system.report().mode == "Aggressive" and system.report().plateau_counter == 1
    assert events_with(system, "quality: 2 validations without a new best")
    system.on_validation(230, 0.52)
    drive.run(10)
    assert system.report().mode == "Stable" and system.report().plateau_counter == 0


def test_validations_during_warmup_and_settling_do_not_count_as_stalls() -> None:
    system, schedule = make(ADAPTIVE_LR_BOOST_FACTOR=1.0)
    drive = Driver(system, schedule)
    system.on_validation(0, 0.5)
    for _ in range(10):
        drive.run(10)
        system.on_validation(drive.step, 0.4)
    drive.run(60)
    assert system.report().mode == "Stable"


# --- loss weights --------------------------------------------------------------------------------


def test_blur_raises_ms_and_gradient_lowers_l1_within_the_per_update_limit() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(160, sharpness=0.8)  # 20 % too blurry: the move is capped at MAX_STEP 0.1
    (step, before, after), *_ = drive.weight_changes()
    assert step == 150  # first update in Stable, a full window of data
    assert after.ms == pytest.approx(0.2 * 1.1)
    assert after.gradient == pytest.approx(0.1 * 1.1)
    assert after.l1 == pytest.approx(1.0 * 0.9)
    assert after.perceptual == before.perceptual == 0.0  # perceptual loss off
    assert events_with(system, "sharpness 0.800 (blurry)")


def test_move_is_proportional_to_the_error_below_the_limit() -> None:
    system, schedule = make()
    Driver(system, schedule).run(160, sharpness=0.93)
    assert system.weights.ms == pytest.approx(0.2 * 1.07)
    assert system.weights.l1 == pytest.approx(0.93)


def test_oversharp_lowers_ms_and_gradient_raises_l1_back() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(160, sharpness=0.8)
    drive.run(100, sharpness=1.3)
    _, before, after = drive.weight_changes()[-1]
    assert after.ms == pytest.approx(before.ms - 0.1 * 0.2)
    assert after.l1 == pytest.approx(before.l1 + 0.1 * 1.0)
    assert events_with(system, "(oversharp)")


def test_within_tolerance_nothing_moves() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(1000, sharpness=lambda i: 0.96 if i % 2 else 1.04)
    assert drive.weight_changes() == []


def test_cooldown_spaces_moves_and_is_reported() -> None:
    system, schedule = make(ADAPTIVE_WEIGHT_CEILING=10.0, ADAPTIVE_L1_FLOOR=0.0)
    drive = Driver(system, schedule)
    drive.run(600, sharpness=0.8)
    assert [step for step, _, _ in drive.weight_changes()] == [150, 250, 350, 450, 550]
    reports = {step: report for step, _, _, report in drive.updates}
    assert reports[150].is_cooldown and reports[150].cooldown_remaining == 100
    assert reports[200].is_cooldown and reports[200].cooldown_remaining == 50
    assert reports[240].cooldown_remaining == 10
    assert not reports[140].is_cooldown and reports[140].cooldown_remaining == 0
    for _, before, after in drive.weight_changes():  # the per-update limit, on every move
        assert abs(after.ms - before.ms) <= 0.1 * 0.2 + 1e-12
        assert abs(after.gradient - before.gradient) <= 0.1 * 0.1 + 1e-12
        assert abs(after.l1 - before.l1) <= 0.1 * 1.0 + 1e-12


def test_each_move_waits_for_a_full_window_of_new_data() -> None:
    system, schedule = make(
        ADAPTIVE_WEIGHT_COOLDOWN_STEPS=0, ADAPTIVE_WEIGHT_CEILING=10.0, ADAPTIVE_L1_FLOOR=0.0
    )
    drive = Driver(system, schedule)
    drive.run(300, sharpness=0.8)
    assert [step for step, _, _ in drive.weight_changes()] == [150, 200, 250, 300]


def test_aggressive_mode_halves_the_cooldown() -> None:
    system, schedule = make(ADAPTIVE_WEIGHT_CEILING=10.0, ADAPTIVE_L1_FLOOR=0.0)
    drive = Driver(system, schedule)
    drive.run(400, sharpness=0.8, loss=flat_after(0))  # a loss plateau from the start
    assert drive.modes()[250] == "Aggressive"
    steps = [step for step, _, _ in drive.weight_changes()]
    assert steps[:2] == [150, 250]  # Stable: 100 apart
    assert steps[2:] == [300, 350, 400]  # Aggressive: 50 apart


def test_floors_and_ceilings_hold() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(2000, sharpness=0.5)  # blurry for long: ms/grad to their ceiling, L1 to its floor
    assert system.weights == LossWeights(l1=0.5, ms=0.2 * 2.0, gradient=0.1 * 2.0, perceptual=0.0)
    assert min(w.l1 for _, w, _, _ in drive.updates) == pytest.approx(0.5)  # never below
    drive.run(3000, sharpness=1.6)  # oversharp for long: ms/grad to their floor, L1 to target
    assert system.weights.l1 == pytest.approx(1.0)
    assert system.weights.ms == pytest.approx(0.2 * 0.25)
    assert system.weights.gradient == pytest.approx(0.1 * 0.25)
    assert max(w.l1 for _, w, _, _ in drive.updates) == pytest.approx(1.0)  # never above
    assert min(w.ms for _, w, _, _ in drive.updates) == pytest.approx(0.05)
    drive.run(200, sharpness=1.6)
    assert not system.report().is_cooldown  # at the bounds: no move, so no cooldown either


def test_no_sharpening_term_means_no_weight_moves() -> None:
    system, schedule = make(MS_WEIGHT=0.0, GRAD_WEIGHT=0.0)
    drive = Driver(system, schedule)
    drive.run(600, sharpness=0.5)
    assert drive.weight_changes() == []  # lowering L1 alone would only rescale the loss


def test_non_finite_steps_are_left_out_of_the_sharpness_mean() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(
        160,
        sharpness=lambda i: 0.9 if i % 2 else math.nan,
        finite=lambda i: bool(i % 2),
    )
    assert system.weights.ms == pytest.approx(0.2 * 1.1)


def test_adaptive_loss_weights_false_freezes_the_weights_but_not_the_clip() -> None:
    system, schedule = make(ADAPTIVE_LOSS_WEIGHTS=False)
    drive = Driver(system, schedule)
    assert not system.needs_sharpness
    drive.run(1000, sharpness=0.5, grad_norm=lambda i: 1.0 + (i % 7) * 0.1)
    assert all(w == LossWeights.from_config(system.config) for _, w, _, _ in drive.updates)
    assert not any(r.is_cooldown for _, _, _, r in drive.updates)
    assert system.grad_clip == pytest.approx(1.6 * 1.5, rel=0.05)  # still adapts


def test_adaptive_grad_clip_false_freezes_the_clip_but_not_the_weights() -> None:
    system, schedule = make(ADAPTIVE_GRAD_CLIP=False)
    drive = Driver(system, schedule)
    drive.run(600, sharpness=0.8, grad_norm=50.0)
    assert {clip for _, _, clip, _ in drive.updates} == {1.5}
    assert drive.weight_changes()


def test_both_switches_off_is_mode_off_and_nothing_moves() -> None:
    system, schedule = make(ADAPTIVE_LOSS_WEIGHTS=False, ADAPTIVE_GRAD_CLIP=False)
    drive = Driver(system, schedule)
    drive.run(1500, sharpness=0.5, grad_norm=50.0, loss=flat_after(0))
    for _, weights, clip, report in drive.updates:
        assert weights == LossWeights.from_config(system.config)
        assert clip == 1.5
        assert report == AdaptiveReport("Off", False, 0, 0, False, 0.0)
    assert schedule.boost_until == -1
    assert system.events == []


# --- perceptual ----------------------------------------------------------------------------------


@pytest.fixture
def vgg_file(tmp_path: Path) -> str:
    path = tmp_path / "vgg16.pth"
    path.write_bytes(b"")  # the config only checks that the file exists
    return str(path)


def test_perceptual_weight_adapts_when_on(vgg_file: str) -> None:
    system, schedule = make(PERCEPTUAL_WEIGHT=0.05, PERCEPTUAL_WEIGHTS_PATH=vgg_file)
    Driver(system, schedule).run(160, sharpness=0.8)
    assert system.weights.perceptual == pytest.approx(0.05 * 1.1)


def test_perceptual_weight_stays_zero_when_off() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(600, sharpness=0.5, perceptual=lambda s: 1.0 - s / 1000)
    assert all(w.perceptual == 0.0 for _, w, _, _ in drive.updates)
    assert all(r.perceptual_trend == 0.0 for _, _, _, r in drive.updates)


def test_perceptual_trend_is_the_slope_over_the_window(vgg_file: str) -> None:
    system, schedule = make(PERCEPTUAL_WEIGHT=0.05, PERCEPTUAL_WEIGHTS_PATH=vgg_file)
    drive = Driver(system, schedule)
    assert system.report().perceptual_trend == 0.0  # fewer than two points
    drive.run(300, perceptual=lambda s: 0.5 - 0.0002 * s)  # -0.2 per 1000 steps
    assert system.report().perceptual_trend == pytest.approx(-0.2)
    drive.run(100, perceptual=lambda s: 0.44 + 0.0001 * (s - 300))  # rising now
    assert system.report().perceptual_trend == pytest.approx(0.1)  # the window forgot the fall


# --- plateau, LR boost, safety reset -------------------------------------------------------------


def test_plateau_boost_is_applied_by_the_schedule_for_exactly_its_duration() -> None:
    # late in the cosine (MAX_STEPS 1500) the base LR is far below MAX_LR: x3 is visible
    system, schedule = make(MAX_STEPS=1500)
    drive = Driver(system, schedule)
    drive.run(1190, loss=flat_after(1000))
    assert system.report().lr_boost_available
    drive.run(260, loss=flat_after(1000))
    boosts = events_with(system, "LR boost x3 for 50 steps")
    assert [e.split(":")[0] for e in boosts] == ["step 1200", "step 1400"]
    for i in range(1190, 1450):
        base = schedule.base_lr(i)
        boosted = 1200 <= i < 1250 or 1400 <= i < 1450
        expected = min(3.0 * base, 1e-3) if boosted else base
        assert drive.lrs[i] == pytest.approx(expected, rel=1e-12), i
    assert drive.lrs[1200] == pytest.approx(3.0 * schedule.base_lr(1200))  # not capped here
    available = {step: r.lr_boost_available for step, _, _, r in drive.updates}
    assert not any(available[s] for s in range(1200, 1400, 10))  # boost + cooldown
    assert not available[1400]  # the second boost started at once: the plateau persists


def test_boost_is_capped_at_max_lr() -> None:
    system, schedule = make()  # MAX_STEPS 100k: the base LR is close to MAX_LR
    drive = Driver(system, schedule)
    drive.run(600, loss=flat_after(200))
    assert events_with(system, "step 400: LR boost")
    assert all(drive.lrs[i] == 1e-3 for i in range(400, 450))
    assert drive.lrs[450] == pytest.approx(schedule.base_lr(450)) and drive.lrs[450] < 1e-3
    assert max(drive.lrs.values()) == 1e-3


def test_safety_reset_only_past_its_threshold_after_a_boost() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    loss = flat_after(200)  # plateau declared at step 400
    drive.run(990, loss=loss, sharpness=0.7, grad_norm=lambda i: 3.0 + (i % 5))
    assert system.weights != LossWeights.from_config(system.config)
    assert system.grad_clip != 1.5
    assert events_with(system, "safety reset") == []
    drive.run(10, loss=loss, sharpness=0.7)  # step 1000 = plateau start 400 + RESET_STEPS 600
    (reset,) = events_with(system, "safety reset")
    assert reset.startswith("step 1000: safety reset: plateau since step 400")
    assert system.weights == LossWeights.from_config(system.config)
    assert system.grad_clip == 1.5
    assert system.report().mode == "Settling"  # ADAPTIVE_RESUME_SETTLING_STEPS after a reset
    assert system.report().plateau_counter == 0
    drive.run(20, loss=loss, grad_norm=4.0)
    assert system.grad_clip == 1.5  # the old norms were dropped; too few new ones yet


def test_no_safety_reset_without_a_boost() -> None:
    system, schedule = make(ADAPTIVE_LR_BOOST_FACTOR=1.0)
    drive = Driver(system, schedule)
    drive.run(3000, loss=flat_after(200))
    assert system.report().mode == "Aggressive" and system.report().plateau_counter > 200
    assert not system.report().lr_boost_available
    assert events_with(system, "safety reset") == events_with(system, "LR boost") == []


def noisy_window_means(trend: np.ndarray, seed: int) -> Callable[[int], float]:
    """Per-step losses with 20 % noise, averaged over each logging window like the engine."""
    per_step = trend * (1 + 0.2 * np.random.default_rng(seed).standard_normal(trend.size))
    return lambda step: float(per_step[step - CADENCE : step].mean())


def test_no_safety_reset_on_a_noisy_but_improving_run() -> None:
    steps = 4000
    trend = 0.05 + np.exp(-np.arange(steps) / 1500)
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(steps, loss=noisy_window_means(trend, seed=0), sharpness=1.0)
    assert events_with(system, "safety reset") == []
    counters = [r.plateau_counter for _, _, _, r in drive.updates]
    assert max(counters) * CADENCE < BASE["ADAPTIVE_RESET_STEPS"] / 2
    aggressive = sum(r.mode == "Aggressive" for _, _, _, r in drive.updates)
    assert aggressive / len(drive.updates) < 0.1  # the old counter was "always on"

    # the same noise on a flat loss: the reset does fire (the test above has teeth)
    system, schedule = make()
    Driver(system, schedule).run(steps, loss=noisy_window_means(0 * trend + 0.3, seed=0))
    assert events_with(system, "safety reset")


# --- adaptive gradient clip ----------------------------------------------------------------------


def test_clip_follows_the_percentile_of_recent_norms() -> None:
    norms = np.random.default_rng(1).lognormal(mean=0.0, sigma=0.5, size=400)
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(30, grad_norm=lambda i: norms[i])
    assert system.grad_clip == 1.5  # fewer than MIN_CLIP_SAMPLES norms yet
    assert MIN_CLIP_SAMPLES > 30
    drive.run(370, grad_norm=lambda i: norms[i])
    recent = norms[200:400].astype(np.float32)  # ADAPTIVE_CLIP_HISTORY 200
    assert system.grad_clip == pytest.approx(np.percentile(recent, 95) * 1.5, rel=1e-5)
    theoretical_p95 = math.exp(0.5 * 1.6449)
    assert system.grad_clip == pytest.approx(theoretical_p95 * 1.5, rel=0.15)
    assert drive.modes()[400] == "Stable" and drive.modes()[50] == "Warmup"
    assert drive.updates[4][2] != 1.5  # step 50: the clip adapts during warmup too


def test_clip_history_keeps_only_recent_steps_and_skips_non_finite() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(200, grad_norm=10.0)
    assert system.grad_clip == pytest.approx(15.0)
    drive.run(
        200,
        grad_norm=lambda i: math.inf if i % 4 == 0 else 1.0 + (i % 4) * 0.1,
        finite=lambda i: i % 4 != 0,
    )
    finite_norms = [np.float32(1.0 + (i % 4) * 0.1) for i in range(200, 400) if i % 4 != 0]
    assert system.grad_clip == pytest.approx(np.percentile(finite_norms, 95) * 1.5, rel=1e-6)


def test_clip_is_clamped_to_its_bounds() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(100, grad_norm=1e4)
    assert system.grad_clip == 100.0
    drive.run(200, grad_norm=1e-5)
    assert system.grad_clip == 0.01


# --- no host sync --------------------------------------------------------------------------------


def test_record_step_does_no_host_sync() -> None:
    """On the meta device any read of a value raises, so a sync would fail here."""
    config = build_config({**BASE, "ADAPTIVE_CLIP_HISTORY": 32})
    system = AdaptiveSystem(config, LRSchedule.from_config(config), "meta")
    meta = lambda v: torch.tensor(v, device="meta")  # noqa: E731
    for _ in range(3 * config.ADAPTIVE_CLIP_HISTORY):
        system.record_step(meta(1.0), meta(0.9), torch.ones((), dtype=torch.bool, device="meta"))
    assert system.grad_clip == 1.5
    with pytest.raises((RuntimeError, NotImplementedError)):
        meta(1.0).item()  # a read on meta fails: the loop above would have raised


def test_update_reads_the_device_once(monkeypatch: pytest.MonkeyPatch) -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(200, sharpness=0.8, grad_norm=lambda i: 1.0 + i % 3)
    reads: list[str] = []
    for name in ("tolist", "item", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _name: str = name, _f: Any = original) -> Any:
            reads.append(_name)
            return _f(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    system.update(200, 0.1, 0.0)
    assert reads == ["tolist"]


# --- state, config, events, report ---------------------------------------------------------------


def plain(value: Any) -> bool:
    """Only what torch.load(weights_only=True) takes without custom classes."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return isinstance(value, bool | int | float | torch.Tensor)


def same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def own_state(system: AdaptiveSystem) -> dict[str, Any]:
    """Every attribute that is state (not the config, the schedule or the event log), the
    attributes of its parts (the adaptive weights and clip) included."""
    skip = {"config", "schedule", "device", "_events", "_last_mode", "weights"}
    state: dict[str, Any] = {}
    for part in (system, system._weighting, system._clip):
        prefix = "" if part is system else f"{type(part).__name__}."
        for k, v in vars(part).items():
            if k not in skip and not isinstance(v, AdaptiveWeights | AdaptiveClip):
                state[prefix + k] = list(v.values()) if isinstance(v, dict) else v
    return state


def test_state_dict_round_trip_gives_identical_future_decisions(vgg_file: str) -> None:
    overrides = {
        "PERCEPTUAL_WEIGHT": 0.05,
        "PERCEPTUAL_WEIGHTS_PATH": vgg_file,
        "ADAPTIVE_WEIGHT_CEILING": 10.0,  # weights still moving when the state is saved
        "ADAPTIVE_L1_FLOOR": 0.0,
    }
    rng = np.random.default_rng(2)
    norms = rng.lognormal(0.0, 0.5, 3000)
    sharp = 0.85 + 0.1 * rng.standard_normal(3000)
    inputs = {
        "loss": flat_after(900),
        "sharpness": lambda i: sharp[i],
        "grad_norm": lambda i: norms[i],
        "perceptual": lambda s: 0.3 + 0.1 * math.sin(s / 100),
    }
    system, schedule = make(**overrides)
    drive = Driver(system, schedule)
    drive.run(500, **inputs)
    system.on_resume(500)
    for step, quality in ((600, 0.6), (700, 0.59), (1234, 0.58)):
        drive.run(step - drive.step, **inputs)  # 1234: the device holds a partial window
        system.on_validation(step, quality)
    report = system.report()  # saved inside a weight cooldown and a boost cooldown
    assert report.is_cooldown and report.mode == "Aggressive" and not report.lr_boost_available

    state = system.state_dict()
    assert plain(state)
    buffer = io.BytesIO()
    torch.save({"adaptive": state, "schedule": schedule.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    twin, twin_schedule = make(**overrides)
    twin.load_state_dict(loaded["adaptive"])
    twin_schedule.load_state_dict(loaded["schedule"])
    assert same_state(own_state(twin), own_state(system))  # every attribute came across
    twin_drive = Driver(twin, twin_schedule, step=1234)
    system.drain_events()

    for d in (drive, twin_drive):
        d.updates.clear()
        d.run(6, **inputs)  # to the next update: it reads the restored partial window
    assert same_state(twin.state_dict(), system.state_dict())
    for d in (drive, twin_drive):
        d.run(1500, **inputs)
        d.system.on_validation(d.step, 0.6)
        d.run(200, **inputs)
    assert twin_drive.updates == drive.updates
    assert same_state(twin.state_dict(), system.state_dict())
    assert twin_drive.lrs == {i: lr for i, lr in drive.lrs.items() if i >= 1234}
    assert twin.drain_events() == system.drain_events()
    assert drive.updates[0][1] != drive.updates[-1][1]  # the weights kept moving after the load


def test_load_state_dict_accepts_another_clip_history_length() -> None:
    system, schedule = make()
    Driver(system, schedule).run(150, grad_norm=lambda i: float(i))
    longer, _ = make(ADAPTIVE_CLIP_HISTORY=400)
    longer.load_state_dict(system.state_dict())
    ring = longer.state_dict()["grad_norms"]
    assert ring[:150].tolist() == [float(i) for i in range(150)]
    assert torch.isnan(ring[150:]).all()


def test_apply_config_moves_the_anchor_and_applies_bounds_at_once() -> None:
    system, schedule = make()
    drive = Driver(system, schedule)
    drive.run(160, sharpness=0.8)
    assert system.weights.gradient == pytest.approx(0.1 * 1.1)
    system.apply_config(system.config.replace({"GRAD_WEIGHT": 0.3}))
    assert system.weights.gradient == pytest.approx(0.3 * 1.1)  # same multiplier, new anchor
    system.apply_config(system.config.replace({"ADAPTIVE_L1_FLOOR": 0.95}))
    assert system.weights.l1 == pytest.approx(0.95)  # the new floor holds at once
    system.apply_config(system.config.replace({"ADAPTIVE_LOSS_WEIGHTS": False}))
    assert system.weights == LossWeights.from_config(system.config)


def test_apply_config_initial_clip_and_history_length() -> None:
    system, schedule = make()
    system.apply_config(system.config.replace({"INITIAL_GRAD_CLIP": 2.5}))
    assert system.grad_clip == 2.5  # no history yet: the new starting value applies
    drive = Driver(system, schedule)
    drive.run(100, grad_norm=lambda i: 1.0 if i < 60 else 3.0)
    clip = system.grad_clip
    system.apply_config(system.config.replace({"INITIAL_GRAD_CLIP": 0.5}))
    assert system.grad_clip == clip  # derived from history: unchanged
    system.apply_config(system.config.replace({"ADAPTIVE_CLIP_HISTORY": 40}))
    drive.run(10, grad_norm=3.0)
    assert system.grad_clip == pytest.approx(4.5)  # only the newest 40 norms (all 3.0) remain


def test_events_are_drained() -> None:
    system, schedule = make()
    Driver(system, schedule).run(200)
    events = system.drain_events()
    assert events == ["step 100: mode Warmup -> Settling", "step 150: mode Settling -> Stable"]
    assert system.events == [] and system.drain_events() == []


def test_every_report_field_moves(vgg_file: str) -> None:
    system, schedule = make(PERCEPTUAL_WEIGHT=0.05, PERCEPTUAL_WEIGHTS_PATH=vgg_file)
    drive = Driver(system, schedule)
    drive.run(
        1000,
        loss=flat_after(300),
        sharpness=0.8,
        perceptual=lambda s: 0.3 + 0.1 * math.sin(s / 150),
        grad_norm=lambda i: 1.0 + i % 5,
    )
    reports = [r for _, _, _, r in drive.updates]
    for name in AdaptiveReport.__dataclass_fields__:
        assert len({getattr(r, name) for r in reports}) > 1, name
    assert len({clip for _, _, clip, _ in drive.updates}) > 1
    for term in ("l1", "ms", "gradient", "perceptual"):
        assert len({getattr(w, term) for _, w, _, _ in drive.updates}) > 1, term
