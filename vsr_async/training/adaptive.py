"""Adaptive system: loss weights from output sharpness, LR boosts on plateaus, adaptive clip.

`record_step` runs every step and only folds device tensors into device accumulators (no sync).
`update` runs at the logging cadence: one device→host transfer, then every decision on the host.
It owns no model and no optimizer: the engine reads `weights` and `grad_clip`, and a boost goes
through `LRSchedule.start_boost`, so nothing else can overwrite it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vsr_async.records import AdaptiveMode, AdaptiveReport, LossMeans, LossTerm, LossWeights
from vsr_async.training.schedule import LRSchedule

OFF, WARMUP, SETTLING = AdaptiveMode.OFF, AdaptiveMode.WARMUP, AdaptiveMode.SETTLING
STABLE, AGGRESSIVE = AdaptiveMode.STABLE, AdaptiveMode.AGGRESSIVE
TERMS = tuple(LossTerm)  # order of the multipliers in state_dict
SHARPENING = (LossTerm.MS, LossTerm.GRADIENT, LossTerm.PERCEPTUAL)  # moved up when blurry
MIN_CLIP_SAMPLES = 32  # finite gradient norms needed before the clip follows the history
MAX_EVENTS = 100  # undrained events kept (the oldest are dropped)
STATE_VERSION = 1


class AdaptiveSystem:
    """Moves loss weights, boosts the learning rate and sets the gradient clip.

    Modes: Off (ADAPTIVE_LOSS_WEIGHTS and ADAPTIVE_GRAD_CLIP both false: nothing moves), Warmup
    (step < WARMUP_STEPS), Settling (ADAPTIVE_SETTLING_STEPS after warmup, and
    ADAPTIVE_RESUME_SETTLING_STEPS after a resume or a safety reset), Stable, Aggressive (a
    plateau is detected; left when progress resumes). Weight moves and plateau decisions wait
    out Warmup and Settling; the clip adapts in every mode but Off.

    Every weight is its config target times a multiplier, so a live target change moves the
    anchor at once (the user's decision) while the system's own moves stay within
    ADAPTIVE_WEIGHT_MAX_STEP of the target per decision.
    """

    def __init__(self, config: Any, schedule: LRSchedule, device: torch.device | str) -> None:
        self.schedule = schedule
        self.device = torch.device(device)
        # Fixed at start: the perceptual network is loaded only when its weight is > 0.
        self.perceptual_on = config.PERCEPTUAL_WEIGHT > 0
        self._events: list[str] = []

        # host state (all of it in state_dict)
        self._step = 0  # last step seen by update / on_validation / on_resume
        self._recorded = 0  # record_step calls since the ring was (re)filled: the ring index
        self._multipliers: dict[LossTerm, float] = dict.fromkeys(TERMS, 1.0)
        self._grad_clip = float(config.INITIAL_GRAD_CLIP)
        self._clip_from_history = False
        self._cooldown_until = 0  # no weight move before this step
        self._best_loss, self._best_loss_step = math.inf, 0
        self._best_quality, self._quality_stall = -math.inf, 0
        self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
        self._boost_ready_at = 0  # no boost before this step (boost + cooldown)
        self._resume_settle_until = 0
        self._sharpness_since = 0  # step the sharpness window was last cleared
        self._sharpness_history: list[list[float]] = []  # [update step, sum, count] per update
        self._perceptual_history: list[list[float]] = []  # [update step, window mean]

        # device accumulators, written by record_step, read by update
        self._sharpness_sum = torch.zeros((), device=self.device)
        self._sharpness_count = torch.zeros((), device=self.device)
        self._grad_norms = torch.full((config.ADAPTIVE_CLIP_HISTORY,), math.nan, device=self.device)

        self.apply_config(config)
        self._last_mode = self.mode

    # --- configuration -------------------------------------------------------------------------

    def apply_config(self, config: Any) -> None:
        """A live config change: thresholds apply from the next decision; targets, bounds and the
        switches apply at once (explicit user decisions are not rate-limited)."""
        self.config = config
        if not config.ADAPTIVE_LOSS_WEIGHTS:
            self._multipliers = dict.fromkeys(TERMS, 1.0)
        self._multipliers = {t: self._clamp(t, m) for t, m in self._multipliers.items()}
        if not (config.ADAPTIVE_GRAD_CLIP and self._clip_from_history):
            self._grad_clip, self._clip_from_history = float(config.INITIAL_GRAD_CLIP), False
        if self._grad_norms.numel() != config.ADAPTIVE_CLIP_HISTORY:
            self._resize_history(config.ADAPTIVE_CLIP_HISTORY)
        self._weights = self._current_weights()

    @property
    def weights_adaptive(self) -> bool:
        return bool(self.config.ADAPTIVE_LOSS_WEIGHTS)

    @property
    def clip_adaptive(self) -> bool:
        return bool(self.config.ADAPTIVE_GRAD_CLIP)

    @property
    def needs_sharpness(self) -> bool:
        """Whether record_step uses its sharpness argument (the engine may skip computing it)."""
        return self.weights_adaptive

    # --- what the engine reads -----------------------------------------------------------------

    @property
    def weights(self) -> LossWeights:
        return self._weights

    @property
    def grad_clip(self) -> float:
        """A host float, changed only at the logging cadence (clip_grad_norm_ takes it per step)."""
        return self._grad_clip

    @property
    def mode(self) -> AdaptiveMode:
        if not (self.weights_adaptive or self.clip_adaptive):
            return OFF
        if self._step < self.config.WARMUP_STEPS:
            return WARMUP
        if self._step < self._settle_until():
            return SETTLING
        return AGGRESSIVE if self._plateau_counter > 0 else STABLE

    @property
    def lr_boost_available(self) -> bool:
        """False while boosting, during the boost cooldown, when Off, or with factor 1."""
        return (
            self.mode != OFF
            and self.config.ADAPTIVE_LR_BOOST_FACTOR > 1.0
            and not self.schedule.boosting(self._step)
            and self._step >= self._boost_ready_at
        )

    def report(self) -> AdaptiveReport:
        cooling = self.weights_adaptive and self._step < self._cooldown_until
        return AdaptiveReport(
            mode=self.mode,
            is_cooldown=cooling,
            cooldown_remaining=self._cooldown_until - self._step if cooling else 0,
            plateau_counter=self._plateau_counter,
            lr_boost_available=self.lr_boost_available,
            perceptual_trend=self.perceptual_trend,
        )

    @property
    def perceptual_trend(self) -> float:
        """Least-squares slope of the smoothed perceptual loss over the window, per 1000 steps;
        0.0 when the perceptual loss is off or fewer than two points are in the window."""
        points = self._perceptual_history
        if not self.perceptual_on or len(points) < 2:
            return 0.0
        mean_x = sum(p[0] for p in points) / len(points)
        mean_y = sum(p[1] for p in points) / len(points)
        sxx = sum((p[0] - mean_x) ** 2 for p in points)
        sxy = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points)
        return 1000.0 * sxy / sxx if sxx > 0 else 0.0

    @property
    def events(self) -> list[str]:
        """Decisions since the last drain_events(), oldest first (the engine logs them)."""
        return self._events

    def drain_events(self) -> list[str]:
        events, self._events = self._events, []
        return events

    # --- every step: device ops only -----------------------------------------------------------

    def record_step(self, grad_norm: Tensor, sharpness: Tensor, finite: Tensor) -> None:
        """Fold one step into the device accumulators: 0-dim tensors, no value is read (no sync,
        no branch on a value). A non-finite step counts in neither the sharpness nor the clip."""
        if self.weights_adaptive:
            ok = finite & torch.isfinite(sharpness)
            self._sharpness_sum += torch.where(ok, sharpness.float(), 0.0)
            self._sharpness_count += ok.float()
        if self.clip_adaptive:
            usable = finite & torch.isfinite(grad_norm)
            slot = self._recorded % self._grad_norms.numel()  # a host int: no sync
            self._grad_norms[slot] = torch.where(usable, grad_norm.float(), math.nan)
            self._recorded += 1

    # --- logging cadence: one transfer, then host decisions ------------------------------------

    def update(self, step: int, smoothed_loss: float, perceptual_loss: float) -> None:
        """Decide at the logging cadence. `step`: optimizer steps completed. `smoothed_loss`: the
        window mean of a loss that the adaptive weights do not change (see `loss_at_targets`);
        `perceptual_loss`: the window mean of the unweighted perceptual term."""
        self._step = step
        if self.mode == OFF:
            self._note_mode()
            return
        sharp_sum, sharp_count, quantile, samples = self._read_device()
        if self.clip_adaptive:
            self._adapt_clip(quantile, samples)
        if self.weights_adaptive:
            self._sharpness_history.append([float(step), sharp_sum, sharp_count])
        if self.perceptual_on and math.isfinite(perceptual_loss):
            self._perceptual_history.append([float(step), perceptual_loss])
        self._prune_windows(step)
        self._track_best_loss(step, smoothed_loss)
        if self.mode in (STABLE, AGGRESSIVE):
            self._observe_plateau(step)  # may boost, or reset into Settling
        self._note_mode()
        if self.mode in (STABLE, AGGRESSIVE):
            self._maybe_move_weights(step)

    def on_validation(self, step: int, quality_ki: float) -> None:
        """A finished validation: a new best quality resets the stall count, otherwise (after
        Warmup and Settling) it grows. The plateau is re-evaluated at the next update."""
        self._step = step
        if self.mode == OFF or not math.isfinite(quality_ki):
            return
        if quality_ki > self._best_quality + self.config.ADAPTIVE_QUALITY_MIN_GAIN:
            self._best_quality, self._quality_stall = quality_ki, 0
        elif self.mode in (STABLE, AGGRESSIVE):
            self._quality_stall += 1

    def on_resume(self, step: int) -> None:
        """Call after load_state_dict: Settling for ADAPTIVE_RESUME_SETTLING_STEPS."""
        self._step = step
        self._resume_settle_until = step + self.config.ADAPTIVE_RESUME_SETTLING_STEPS
        self._note_mode()

    @staticmethod
    def loss_at_targets(config: Any, losses: LossMeans) -> float:
        """The training loss under the config's target weights: what `update` should get as
        `smoothed_loss`, so a weight move is never mistaken for progress or for a plateau."""
        targets = LossWeights.from_config(config)
        return (
            targets.l1 * losses.l1
            + targets.ms * losses.ms
            + targets.gradient * losses.gradient
            + targets.perceptual * losses.perceptual
        )

    # --- rules ---------------------------------------------------------------------------------

    def _read_device(self) -> tuple[float, float, float, float]:
        """(sharpness sum, sharpness count, clip percentile, finite norms) in one transfer."""
        zero = torch.zeros((), device=self.device)
        quantile = samples = zero
        if self.clip_adaptive:
            quantile = torch.nanquantile(
                self._grad_norms, self.config.ADAPTIVE_CLIP_PERCENTILE / 100
            )
            samples = (~torch.isnan(self._grad_norms)).sum().float()
        packed = torch.stack([self._sharpness_sum, self._sharpness_count, quantile, samples])
        sharp_sum, sharp_count, q, n = packed.tolist()  # device→host sync (logging cadence only)
        self._sharpness_sum.zero_()
        self._sharpness_count.zero_()
        return sharp_sum, sharp_count, q, n

    def _adapt_clip(self, quantile: float, samples: float) -> None:
        """Clip = percentile of recent norms x margin, within [ADAPTIVE_CLIP_MIN, _MAX]."""
        cfg = self.config
        if samples < MIN_CLIP_SAMPLES or not math.isfinite(quantile):
            return  # too little history yet: keep the current clip
        clip = quantile * cfg.ADAPTIVE_CLIP_MARGIN
        self._grad_clip = min(max(clip, cfg.ADAPTIVE_CLIP_MIN), cfg.ADAPTIVE_CLIP_MAX)
        self._clip_from_history = True

    def _track_best_loss(self, step: int, loss: float) -> None:
        """Progress = the smoothed loss below best x (1 − ADAPTIVE_PLATEAU_THRESHOLD)."""
        threshold = self.config.ADAPTIVE_PLATEAU_THRESHOLD
        if math.isfinite(loss) and loss < self._best_loss * (1 - threshold):
            self._best_loss, self._best_loss_step = loss, step

    def _observe_plateau(self, step: int) -> None:
        """One observation per update: count it, boost when available, reset when it lasts."""
        cfg = self.config
        loss_stalled = step - self._best_loss_step >= cfg.ADAPTIVE_PLATEAU_PATIENCE_STEPS
        quality_stalled = self._quality_stall >= cfg.ADAPTIVE_QUALITY_PATIENCE
        if not (loss_stalled or quality_stalled):
            if self._plateau_counter:
                self._event(step, f"progress resumed after {self._plateau_counter} plateau updates")
            self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
            return
        if self._plateau_counter == 0:
            self._plateau_since, self._boost_tried = step, False
            reasons = []
            if loss_stalled:
                reasons.append(f"loss: no new best since step {self._best_loss_step}")
            if quality_stalled:
                reasons.append(f"quality: {self._quality_stall} validations without a new best")
            self._event(step, "plateau (" + "; ".join(reasons) + ")")
        self._plateau_counter += 1
        if self._boost_tried and step - self._plateau_since >= cfg.ADAPTIVE_RESET_STEPS:
            self._safety_reset(step)  # first: a boost coming due must not postpone the reset
        elif self.lr_boost_available:
            self._start_boost(step)

    def _start_boost(self, step: int) -> None:
        cfg = self.config
        factor, duration = cfg.ADAPTIVE_LR_BOOST_FACTOR, cfg.ADAPTIVE_LR_BOOST_STEPS
        self.schedule.start_boost(step, factor, duration)  # boosts step indices [step, +duration)
        self._boost_ready_at = step + duration + cfg.ADAPTIVE_LR_BOOST_COOLDOWN_STEPS
        self._boost_tried = True
        self._event(
            step,
            f"LR boost x{factor:g} for {duration} steps: lr {self.schedule.lr(step):.3g} "
            f"(MAX_LR {self.schedule.max_lr:.3g}); next boost from step {self._boost_ready_at}",
        )

    def _safety_reset(self, step: int) -> None:
        """The plateau outlived a boost by ADAPTIVE_RESET_STEPS: back to the configured start."""
        cfg = self.config
        since = self._plateau_since
        self._multipliers = dict.fromkeys(TERMS, 1.0)
        self._weights = self._current_weights()
        self._grad_clip, self._clip_from_history = float(cfg.INITIAL_GRAD_CLIP), False
        self._grad_norms.fill_(math.nan)  # else the next update restores the old clip
        self._recorded = 0
        self._clear_sharpness_window(step)
        self._cooldown_until = step
        self._plateau_counter, self._plateau_since, self._boost_tried = 0, -1, False
        self._best_loss_step, self._quality_stall = step, 0  # fresh patience; the best stays
        self._resume_settle_until = step + cfg.ADAPTIVE_RESUME_SETTLING_STEPS
        self._event(
            step,
            f"safety reset: plateau since step {since} outlasted an LR boost; weights back to "
            f"targets, clip back to {self._grad_clip:g}",
        )

    def _maybe_move_weights(self, step: int) -> None:
        """Blurry output (ratio < 1 − tol): MS/gradient/perceptual up, L1 down; oversharp:
        the reverse. One move of at most ADAPTIVE_WEIGHT_MAX_STEP per full window and cooldown."""
        cfg = self.config
        if not self.weights_adaptive or step < self._cooldown_until:
            return
        targets = self._targets()
        sharp_terms = [t for t in SHARPENING if targets[t] > 0]
        if not sharp_terms:
            return  # nothing that sharpens is on: lowering L1 alone would only rescale the loss
        ratio = self._window_sharpness(step)
        if ratio is None:
            return
        tol, max_step = cfg.ADAPTIVE_SHARPNESS_TOLERANCE, cfg.ADAPTIVE_WEIGHT_MAX_STEP
        if ratio < 1 - tol:
            delta, reason = min(1 - ratio, max_step), "blurry"
        elif ratio > 1 + tol:
            delta, reason = -min(ratio - 1, max_step), "oversharp"
        else:
            return
        before = dict(self._multipliers)
        for term in sharp_terms:
            self._multipliers[term] = self._clamp(term, self._multipliers[term] + delta)
        if targets[LossTerm.L1] > 0:
            l1 = LossTerm.L1
            self._multipliers[l1] = self._clamp(l1, self._multipliers[l1] - delta)
        if self._multipliers == before:
            return  # every weight already at its bound: no move, no cooldown
        cooldown = cfg.ADAPTIVE_WEIGHT_COOLDOWN_STEPS
        self._cooldown_until = step + (cooldown // 2 if self.mode == AGGRESSIVE else cooldown)
        self._clear_sharpness_window(step)  # judge the new weights on their own data
        self._weights = self._current_weights()
        w = self._weights
        self._event(
            step,
            f"sharpness {ratio:.3f} ({reason}): weights l1 {w.l1:.4g}, ms {w.ms:.4g}, "
            f"gradient {w.gradient:.4g}, perceptual {w.perceptual:.4g}",
        )

    # --- helpers -------------------------------------------------------------------------------

    def _settle_until(self) -> int:
        after_warmup = self.config.WARMUP_STEPS + self.config.ADAPTIVE_SETTLING_STEPS
        return max(after_warmup, self._resume_settle_until)

    def _targets(self) -> dict[LossTerm, float]:
        targets = LossWeights.from_config(self.config)
        on = {t: t is not LossTerm.PERCEPTUAL or self.perceptual_on for t in TERMS}
        return {t: targets.of(t) if on[t] else 0.0 for t in TERMS}

    def _clamp(self, term: LossTerm, multiplier: float) -> float:
        """Floors and ceilings, as fractions of the target: L1 in [ADAPTIVE_L1_FLOOR, 1], the
        others in [ADAPTIVE_WEIGHT_FLOOR, ADAPTIVE_WEIGHT_CEILING]."""
        cfg = self.config
        if term is LossTerm.L1:
            lo, hi = cfg.ADAPTIVE_L1_FLOOR, 1.0
        else:
            lo, hi = cfg.ADAPTIVE_WEIGHT_FLOOR, cfg.ADAPTIVE_WEIGHT_CEILING
        return min(max(multiplier, lo), hi)

    def _current_weights(self) -> LossWeights:
        targets, m = self._targets(), self._multipliers
        # 12 significant digits: the panel shows 0.11, not 0.11000000000000001
        return LossWeights(**{t.value: float(f"{targets[t] * m[t]:.12g}") for t in TERMS})

    def _window_sharpness(self, step: int) -> float | None:
        """Mean sharpness ratio over the window, or None before a full window since the last
        move (or when every step in it was non-finite)."""
        if step - self._sharpness_since < self.config.ADAPTIVE_WINDOW_STEPS:
            return None
        total = sum(entry[1] for entry in self._sharpness_history)
        count = sum(entry[2] for entry in self._sharpness_history)
        return total / count if count > 0 else None

    def _clear_sharpness_window(self, step: int) -> None:
        self._sharpness_history, self._sharpness_since = [], step

    def _prune_windows(self, step: int) -> None:
        """Keep the updates whose interval ends inside the last ADAPTIVE_WINDOW_STEPS steps."""
        cutoff = step - self.config.ADAPTIVE_WINDOW_STEPS
        self._sharpness_history = [e for e in self._sharpness_history if e[0] > cutoff]
        self._perceptual_history = [e for e in self._perceptual_history if e[0] > cutoff]

    def _resize_history(self, size: int) -> None:
        """A new ring length keeps the newest norms, oldest first from slot 0."""
        ring, recorded = self._grad_norms, self._recorded
        n = ring.numel()
        ordered = ring[:recorded] if recorded <= n else torch.roll(ring, -(recorded % n))
        kept = ordered[max(ordered.numel() - size, 0) :]
        self._grad_norms = torch.full((size,), math.nan, device=self.device)
        self._grad_norms[: kept.numel()] = kept
        self._recorded = kept.numel()

    def _note_mode(self) -> None:
        mode = self.mode
        if mode != self._last_mode:
            self._event(self._step, f"mode {self._last_mode} -> {mode}")
            self._last_mode = mode

    def _event(self, step: int, text: str) -> None:
        self._events.append(f"step {step}: {text}")
        del self._events[:-MAX_EVENTS]

    # --- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, lists and CPU tensors only (loads with torch.load(weights_only=True))."""
        return {
            "version": STATE_VERSION,
            "step": self._step,
            "recorded": self._recorded,
            "multipliers": [self._multipliers[t] for t in TERMS],
            "grad_clip": self._grad_clip,
            "clip_from_history": self._clip_from_history,
            "cooldown_until": self._cooldown_until,
            "best_loss": self._best_loss,
            "best_loss_step": self._best_loss_step,
            "best_quality": self._best_quality,
            "quality_stall": self._quality_stall,
            "plateau_counter": self._plateau_counter,
            "plateau_since": self._plateau_since,
            "boost_tried": self._boost_tried,
            "boost_ready_at": self._boost_ready_at,
            "resume_settle_until": self._resume_settle_until,
            "sharpness_since": self._sharpness_since,
            "sharpness_history": [list(e) for e in self._sharpness_history],
            "perceptual_history": [list(e) for e in self._perceptual_history],
            # Copies (a checkpoint-time sync, not a per-step one): later steps must not alter them.
            "sharpness_sum": self._sharpness_sum.detach().to("cpu", copy=True),
            "sharpness_count": self._sharpness_count.detach().to("cpu", copy=True),
            "grad_norms": self._grad_norms.detach().to("cpu", copy=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["version"]) != STATE_VERSION:
            raise ValueError(f"adaptive state version {state['version']} != {STATE_VERSION}")
        self._step = int(state["step"])
        self._recorded = int(state["recorded"])
        self._multipliers = dict(zip(TERMS, (float(m) for m in state["multipliers"]), strict=True))
        self._grad_clip = float(state["grad_clip"])
        self._clip_from_history = bool(state["clip_from_history"])
        self._cooldown_until = int(state["cooldown_until"])
        self._best_loss = float(state["best_loss"])
        self._best_loss_step = int(state["best_loss_step"])
        self._best_quality = float(state["best_quality"])
        self._quality_stall = int(state["quality_stall"])
        self._plateau_counter = int(state["plateau_counter"])
        self._plateau_since = int(state["plateau_since"])
        self._boost_tried = bool(state["boost_tried"])
        self._boost_ready_at = int(state["boost_ready_at"])
        self._resume_settle_until = int(state["resume_settle_until"])
        self._sharpness_since = int(state["sharpness_since"])
        self._sharpness_history = [[float(v) for v in e] for e in state["sharpness_history"]]
        self._perceptual_history = [[float(v) for v in e] for e in state["perceptual_history"]]
        self._sharpness_sum = state["sharpness_sum"].to(self.device, torch.float32, copy=True)
        self._sharpness_count = state["sharpness_count"].to(self.device, torch.float32, copy=True)
        self._grad_norms = state["grad_norms"].to(self.device, torch.float32, copy=True)
        self.apply_config(self.config)  # the current config's bounds and ring length apply
        self._last_mode = self.mode
