"""`/metrics`: Prometheus exposition through prometheus_client, one registry per app.

`StoreCollector` reads `store.snapshot()` at scrape time (on the event loop, where the store
lives), so the numbers are exactly the panel's. HTTP request counts come from the middleware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vsr_async.runtime.store import StatsStore

# snapshot key → (metric name, help); unlabelled gauges
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("step_current", "vsr_step", "Optimizer steps completed."),
    ("step_max", "vsr_step_max", "Optimizer steps of the whole run (MAX_STEPS)."),
    ("epoch_num", "vsr_epoch", "Current epoch (0-based)."),
    ("learning_rate_value", "vsr_learning_rate", "Learning rate of the latest step."),
    ("gradient_clip_val", "vsr_gradient_clip", "Gradient-norm clip in use."),
    ("grad_norm_value", "vsr_grad_norm", "Mean gradient norm over the logging window."),
    ("iteration_duration", "vsr_iteration_duration_seconds", "Seconds per optimizer step."),
    ("vram_usage_gb", "vsr_vram_peak_gigabytes", "Peak GPU memory since the last validation."),
    ("vram_reserved_gb", "vsr_vram_reserved_gigabytes", "GPU memory reserved by the allocator."),
    ("host_memory_gb", "vsr_host_memory_gigabytes", "Resident memory of the training process."),
    ("adam_momentum_avg", "vsr_adam_momentum_avg", "Mean |first moment| of the optimizer."),
    ("validation_loss_value", "vsr_validation_loss", "Mean L1 of the latest validation."),
    ("best_quality_ever", "vsr_best_quality", "Best output quality so far (0-1)."),
    ("validation_duration_s", "vsr_validation_duration_seconds", "Latest validation's time."),
    ("validation_progress", "vsr_validation_progress", "Progress of the running validation."),
    ("adaptive_plateau_counter", "vsr_adaptive_plateau_counter", "Validations without gain."),
    ("adaptive_cooldown_remaining", "vsr_adaptive_cooldown_remaining", "Cooldown steps left."),
    ("adaptive_perceptual_trend", "vsr_adaptive_perceptual_trend", "Perceptual loss trend."),
    ("training_active", "vsr_training_active", "1 while the run trains (or is paused)."),
    ("training_paused", "vsr_training_paused", "1 while training is paused."),
    ("validation_running", "vsr_validation_running", "1 while a validation runs."),
)

# labelled gauges: metric name, help, label name, {label value: snapshot key}
LABELLED: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    (
        "vsr_loss",
        "Training loss over the logging window (total weighted, components unweighted).",
        "component",
        {
            "total": "total_loss_value",
            "l1": "l1_loss_value",
            "ms": "ms_loss_value",
            "gradient": "gradient_loss_value",
            "perceptual": "perceptual_loss_value",
        },
    ),
    (
        "vsr_loss_weight",
        "Current loss weight.",
        "component",
        {
            "l1": "l1_weight_current",
            "ms": "ms_weight_current",
            "gradient": "gradient_weight_current",
            "perceptual": "perceptual_weight_current",
        },
    ),
    (
        "vsr_quality",
        "Quality of the latest validation (0-1): bicubic (lr), model output (ki), improvement.",
        "kind",
        {
            "lr": "quality_lr_value",
            "ki": "quality_ki_value",
            "improvement": "quality_improvement_value",
        },
    ),
    (
        "vsr_psnr_db",
        "PSNR of the latest validation in dB.",
        "kind",
        {"lr": "psnr_lr_db", "ki": "psnr_ki_db", "gain": "psnr_gain_db"},
    ),
    ("vsr_ssim", "SSIM of the latest validation.", "kind", {"lr": "ssim_lr", "ki": "ssim_ki"}),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class StoreCollector(Collector):
    """Reads the store on every scrape; values the store does not have yet are left out."""

    def __init__(self, store: StatsStore, sse_clients: Callable[[], int]) -> None:
        self.store = store
        self.sse_clients = sse_clients

    def collect(self) -> Iterator[Metric]:
        snap = self.store.snapshot()
        for key, name, help_text in GAUGES:
            value = _number(snap.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)
        for name, help_text, label, keys in LABELLED:
            family = GaugeMetricFamily(name, help_text, labels=[label])
            for label_value, key in keys.items():
                value = _number(snap.get(key))
                if value is not None:
                    family.add_metric([label_value], value)
            yield family
        activity = GaugeMetricFamily(
            "vsr_layer_activity", "Mean |activation| per block.", labels=["layer"]
        )
        for layer, value in sorted(snap["layer_activity_map"].items()):
            if (number := _number(value)) is not None:
                activity.add_metric([layer], number)
        yield activity
        yield CounterMetricFamily(
            "vsr_validations", "Validations finished in this run.", value=snap["validation_count"]
        )
        yield CounterMetricFamily(
            "vsr_nonfinite_steps_skipped",
            "Optimizer steps skipped for a non-finite loss or gradient.",
            value=snap["nonfinite_steps_skipped"],
        )
        yield CounterMetricFamily(
            "vsr_corrupt_files_skipped",
            "Training files skipped because they could not be read.",
            value=snap["corrupt_files_skipped"],
        )
        yield GaugeMetricFamily(
            "vsr_panel_event_streams", "Open /api/events streams.", value=self.sse_clients()
        )


def build_registry(store: StatsStore, sse_clients: Callable[[], int]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, sse_clients))
    return registry


def request_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "vsr_http_requests",
        "HTTP requests answered by the panel, by route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
