"""The snapshot's one definition: every key the store publishes, its type and its meaning.

`Snapshot` is the only list of the keys (DESIGN §3; the Statistik files are a contract). The store
fills it, `web/schemas.py` derives the OpenAPI schema from it, `web/metrics.py` the Prometheus
table, the dashboard indexes it with literal keys that a type checker knows, and the tests take
their key sets from `SNAPSHOT_KEYS`. Each annotation carries a `Key`: one line of meaning, the JSON
Schema bounds, and the Prometheus metric the key feeds, if any. Plain data: nothing here reads the
store or knows HTTP.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypedDict, cast

from vsr_async.records import AdaptiveMode, LossTerm
from vsr_async.runtime.commands import Phase

SCHEMA_VERSION = 2  # `schema_version`: bump it when a key is renamed or removed or changes type


@dataclass(frozen=True, slots=True)
class Metric:
    """The Prometheus metric a key feeds: an unlabelled gauge or counter, or one sample of a
    labelled family (`label_value` None: one sample per entry of a map-valued key)."""

    name: str
    help: str | None = None  # None: the key's own line
    kind: Literal["gauge", "counter"] = "gauge"
    label: str | None = None
    label_value: str | None = None


@dataclass(frozen=True, slots=True)
class Family:
    """A labelled gauge family that several keys share, e.g. vsr_loss{component="l1"}."""

    name: str
    help: str
    label: str

    def __call__(self, label_value: str | None = None) -> Metric:
        return Metric(self.name, self.help, label=self.label, label_value=label_value)


@dataclass(frozen=True, slots=True)
class Key:
    """What one snapshot key means, beyond its Python type."""

    doc: str
    metric: Metric | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    request_metric: bool = False  # a finished validation request reports it (`metrics`)


def gauge(name: str, help: str | None = None) -> Metric:
    """An unlabelled gauge (a boolean key: 1 or 0); its help is the key's line unless given."""
    return Metric(name, help)


def counter(name: str) -> Metric:
    """An unlabelled counter (a key that only grows); its help is the key's line."""
    return Metric(name, kind="counter")


def count(doc: str, metric: Metric | None = None) -> Key:
    """A key that counts (steps, files, validations): never negative."""
    return Key(doc, metric, minimum=0)


def request_metric(doc: str, metric: Metric | None = None) -> Key:
    """A number of the latest validation that a finished validation request also reports."""
    return Key(doc, metric, request_metric=True)


LOSS = Family(
    "vsr_loss",
    "Training loss over the logging window (total weighted, components unweighted).",
    "component",
)
WEIGHT = Family("vsr_loss_weight", "Current loss weight.", "component")
QUALITY = Family(
    "vsr_quality",
    "Quality of the latest validation (0-1): bicubic (lr), model output (ki), improvement.",
    "kind",
)
PSNR = Family(
    "vsr_psnr_db", "PSNR of the latest validation in dB (y_*: Y channel, border cropped).", "kind"
)
SSIM = Family("vsr_ssim", "SSIM of the latest validation (y_*: Y channel, border cropped).", "kind")
LAYER_ACTIVITY = Family("vsr_layer_activity", "Mean |activation| per block.", "layer")


class ValidationImage(TypedDict):
    """One validation image: bicubic ("LR") and model output ("KI") against the GT."""

    name: Annotated[str, Key("File name of the validation image (escaped if not UTF-8).")]
    psnr_lr_db: Annotated[float | None, Key("PSNR of the bicubic upscale in dB.")]
    psnr_ki_db: Annotated[float | None, Key("PSNR of the model output in dB.")]
    ssim_lr: Annotated[float | None, Key("SSIM of the bicubic upscale.")]
    ssim_ki: Annotated[float | None, Key("SSIM of the model output.")]
    quality_lr: Annotated[float | None, Key("Quality (0-1) of the bicubic upscale.")]
    quality_ki: Annotated[float | None, Key("Quality (0-1) of the model output.")]
    psnr_y_lr_db: Annotated[float | None, Key("PSNR of the bicubic upscale on Y, border cropped.")]
    psnr_y_ki_db: Annotated[float | None, Key("PSNR of the model output on Y, border cropped.")]
    ssim_y_lr: Annotated[float | None, Key("SSIM of the bicubic upscale on Y, border cropped.")]
    ssim_y_ki: Annotated[float | None, Key("SSIM of the model output on Y, border cropped.")]


class Snapshot(TypedDict):
    """The run's state in the contract's key names, in the order the files list them. Numbers
    that are not finite are null; a value that does not exist yet is null, never a constant."""

    schema_version: Annotated[int, Key("Version of this key set (SCHEMA_VERSION).")]
    run_id: Annotated[str, Key("Identity of the run; a resumed run keeps it.")]
    # progress
    step_current: Annotated[int, count("Optimizer steps completed.", gauge("vsr_step"))]
    step_max: Annotated[
        int, count("Optimizer steps of the whole run (MAX_STEPS).", gauge("vsr_step_max"))
    ]
    epoch_num: Annotated[
        int, Key("Current epoch, counted from 1 (as before).", gauge("vsr_epoch"), minimum=1)
    ]
    epoch_step_current: Annotated[int, count("Optimizer steps done in this epoch.")]
    epoch_step_total: Annotated[int, count("Optimizer steps of one epoch.")]
    learning_rate_value: Annotated[
        float | None, Key("Learning rate of the latest step.", gauge("vsr_learning_rate"))
    ]
    lr_phase_name: Annotated[str | None, Key("Phase of the learning-rate schedule.")]
    # losses: window means at the logging cadence (total weighted, components unweighted)
    total_loss_value: Annotated[float | None, Key("Total training loss.", LOSS("total"))]
    l1_loss_value: Annotated[float | None, Key("L1 loss.", LOSS(LossTerm.L1))]
    ms_loss_value: Annotated[float | None, Key("Multi-scale loss.", LOSS(LossTerm.MS))]
    gradient_loss_value: Annotated[float | None, Key("Gradient loss.", LOSS(LossTerm.GRADIENT))]
    perceptual_loss_value: Annotated[
        float | None, Key("Perceptual loss.", LOSS(LossTerm.PERCEPTUAL))
    ]
    # weights
    l1_weight_current: Annotated[float | None, Key("Weight of the L1 loss.", WEIGHT(LossTerm.L1))]
    ms_weight_current: Annotated[float | None, Key("Weight of the MS loss.", WEIGHT(LossTerm.MS))]
    gradient_weight_current: Annotated[
        float | None, Key("Weight of the gradient loss.", WEIGHT(LossTerm.GRADIENT))
    ]
    perceptual_weight_current: Annotated[
        float | None, Key("Weight of the perceptual loss.", WEIGHT(LossTerm.PERCEPTUAL))
    ]
    gradient_clip_val: Annotated[
        float | None, Key("Gradient-norm clip in use.", gauge("vsr_gradient_clip"))
    ]
    grad_norm_value: Annotated[
        float | None, Key("Mean gradient norm over the logging window.", gauge("vsr_grad_norm"))
    ]
    # adaptive: all computed from live state, none constant
    adaptive_mode: Annotated[
        str | None,
        Key(
            f"Adaptive mode: {', '.join(AdaptiveMode)}.",
            enum=tuple(m.value for m in AdaptiveMode),
        ),
    ]
    adaptive_is_cooldown: Annotated[
        bool | None, Key("True while the loss weights' cooldown lasts.")
    ]
    adaptive_cooldown_remaining: Annotated[
        int | None, Key("Cooldown steps left.", gauge("vsr_adaptive_cooldown_remaining"))
    ]
    adaptive_plateau_counter: Annotated[
        int | None, Key("Validations without gain.", gauge("vsr_adaptive_plateau_counter"))
    ]
    adaptive_lr_boost_available: Annotated[
        bool | None, Key("True when a learning-rate boost may start now.")
    ]
    adaptive_perceptual_trend: Annotated[
        float | None, Key("Perceptual loss trend.", gauge("vsr_adaptive_perceptual_trend"))
    ]
    # quality of the latest validation (fractions 0-1)
    quality_lr_value: Annotated[
        float | None, request_metric("Mean quality of bicubic.", QUALITY("lr"))
    ]
    quality_ki_value: Annotated[
        float | None, request_metric("Mean quality of the output.", QUALITY("ki"))
    ]
    quality_improvement_value: Annotated[
        float | None,
        request_metric("Mean over the images of q_ki - q_lr.", QUALITY("improvement")),
    ]
    quality_ki_to_gt_value: Annotated[float | None, Key("Mean of q_ki - 1.")]
    quality_lr_to_gt_value: Annotated[float | None, Key("Mean of q_lr - 1.")]
    validation_loss_value: Annotated[
        float | None,
        request_metric("Mean L1 of the latest validation.", gauge("vsr_validation_loss")),
    ]
    best_quality_ever: Annotated[
        float | None, Key("Best output quality so far (0-1).", gauge("vsr_best_quality"))
    ]
    best_quality_step: Annotated[int | None, Key("Step of the best output quality.")]
    # performance
    iteration_duration: Annotated[
        float | None, Key("Seconds per optimizer step.", gauge("vsr_iteration_duration_seconds"))
    ]
    vram_usage_gb: Annotated[
        float | None,
        Key("Peak GPU memory since the last validation.", gauge("vsr_vram_peak_gigabytes")),
    ]
    vram_reserved_gb: Annotated[
        float | None,
        Key("GPU memory reserved by the allocator.", gauge("vsr_vram_reserved_gigabytes")),
    ]
    host_memory_gb: Annotated[
        float | None,
        Key("Resident memory of the training process.", gauge("vsr_host_memory_gigabytes")),
    ]
    adam_momentum_avg: Annotated[
        float | None, Key("Mean |first moment| of the optimizer.", gauge("vsr_adam_momentum_avg"))
    ]
    eta_total_formatted: Annotated[str | None, Key("Run time left, from training steps only.")]
    eta_epoch_formatted: Annotated[str | None, Key("Epoch time left, from training steps only.")]
    layer_activity_map: Annotated[
        dict[str, float | None],
        Key(
            "Mean |activation| per block (MODEL vsrpp: the predecessor's names, `Backward 1`…).",
            LAYER_ACTIVITY(),
        ),
    ]
    layer_activity_peak_value: Annotated[
        float | None,
        Key("Largest entry of layer_activity_map.", gauge("vsr_layer_activity_peak")),
    ]
    nonfinite_steps_skipped: Annotated[
        int,
        count(
            "Optimizer steps skipped for a non-finite loss or gradient.",
            counter("vsr_nonfinite_steps_skipped"),
        ),
    ]
    corrupt_files_skipped: Annotated[
        int,
        count(
            "Dataset files skipped: unpaired at the scan, or unreadable in training.",
            counter("vsr_corrupt_files_skipped"),
        ),
    ]
    corrupt_files: Annotated[list[str], Key("The latest 20 skipped dataset files.")]
    # status
    training_active: Annotated[
        bool,
        Key(
            "True while the run trains (or is paused).",
            gauge("vsr_training_active", "1 while the run trains (or is paused)."),
        ),
    ]
    validation_running: Annotated[
        bool,
        Key(
            "True while a validation runs.",
            gauge("vsr_validation_running", "1 while a validation runs."),
        ),
    ]
    validation_progress: Annotated[
        float,
        Key("Progress of the running validation.", gauge("vsr_validation_progress"), 0, 1),
    ]
    training_paused: Annotated[
        bool,
        Key(
            "True while training is paused.",
            gauge("vsr_training_paused", "1 while training is paused."),
        ),
    ]
    training_stopped: Annotated[bool, Key("True once the run has stopped.")]
    run_phase: Annotated[
        str, Key("The supervisor's phase.", enum=tuple(phase.value for phase in Phase))
    ]
    stop_reason: Annotated[str | None, Key("Why the run stopped.")]
    pending_commands: Annotated[list[str], Key("Commands queued for the next step boundary.")]
    last_update_time: Annotated[
        float, Key("When the store last changed (Unix seconds, as before).", minimum=0)
    ]
    last_update_iso: Annotated[str, Key("last_update_time as ISO 8601 UTC.")]
    local_ip_address: Annotated[
        str, Key("This host's LAN address (the panel's, for other machines); 127.0.0.1 if none.")
    ]
    tensorboard_port: Annotated[
        int | None,
        Key(
            "Port of the TensorBoard this run serves (--tensorboard); null when none.",
            minimum=1,
            maximum=65535,
        ),
    ]
    # the latest validation
    validation_step: Annotated[int | None, Key("Step of the latest validation.")]
    validation_trigger: Annotated[str | None, Key("schedule, keyboard or web.")]
    validation_count: Annotated[
        int, count("Validations finished in this run.", counter("vsr_validations"))
    ]
    validated_at: Annotated[str | None, Key("When it finished (ISO 8601 UTC).")]
    psnr_lr_db: Annotated[float | None, request_metric("Mean PSNR of bicubic.", PSNR("lr"))]
    psnr_ki_db: Annotated[float | None, request_metric("Mean PSNR of the output.", PSNR("ki"))]
    psnr_gain_db: Annotated[float | None, Key("psnr_ki_db - psnr_lr_db.", PSNR("gain"))]
    ssim_lr: Annotated[float | None, request_metric("Mean SSIM of bicubic.", SSIM("lr"))]
    ssim_ki: Annotated[float | None, request_metric("Mean SSIM of the output.", SSIM("ki"))]
    # the same on the Y channel (BT.601) with SCALE pixels cropped at the border, as papers
    # report them (`y_channel_keys`); the RGB keys above keep their meaning
    psnr_y_lr_db: Annotated[
        float | None, request_metric("Mean Y-channel PSNR of bicubic.", PSNR("y_lr"))
    ]
    psnr_y_ki_db: Annotated[
        float | None, request_metric("Mean Y-channel PSNR of the output.", PSNR("y_ki"))
    ]
    psnr_y_gain_db: Annotated[float | None, Key("psnr_y_ki_db - psnr_y_lr_db.", PSNR("y_gain"))]
    ssim_y_lr: Annotated[
        float | None, request_metric("Mean Y-channel SSIM of bicubic.", SSIM("y_lr"))
    ]
    ssim_y_ki: Annotated[
        float | None, request_metric("Mean Y-channel SSIM of the output.", SSIM("y_ki"))
    ]
    validation_images: Annotated[list[ValidationImage], Key("Per image: PSNR, SSIM, quality.")]
    validation_duration_s: Annotated[
        float | None, Key("Latest validation's time.", gauge("vsr_validation_duration_seconds"))
    ]
    validation_used_ema: Annotated[bool | None, Key("True if it scored the EMA weights.")]
    # files
    statistics_file: Annotated[str | None, Key("Statistik file of the latest validation.")]
    last_statistics_written: Annotated[str | None, Key("Newest Statistik file on disk.")]
    last_statistics_error: Annotated[str | None, Key("Why the last Statistik write failed.")]
    last_checkpoint: Annotated[str | None, Key("Newest checkpoint file on disk.")]
    # the job: runtime facts the engine reports at its start, lifted out of `runtime`
    world_size: Annotated[
        int | None,
        Key(
            "Ranks of the torchrun job (1 without torchrun); null until the engine has started.",
            gauge("vsr_world_size"),
            minimum=1,
        ),
    ]
    global_batch: Annotated[
        int | None,
        Key(
            "Samples per optimizer step over all ranks (world_size x the per-rank effective "
            "batch); null until the engine has started.",
            gauge("vsr_global_batch_samples"),
            minimum=1,
        ),
    ]
    runtime: Annotated[dict[str, Any], Key("Facts set once: device, precision, batch plan.")]
    config_live: Annotated[dict[str, Any], Key("Current values of the live-changeable keys.")]


@dataclass(frozen=True, slots=True)
class Field:
    """One key of the definition, resolved: name, Python type, `Key` (with a metric's help)."""

    name: str
    type: Any
    key: Key


def fields_of(typed_dict: type) -> tuple[Field, ...]:
    """The keys of a TypedDict of this module, in definition order, with their `Key`."""
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    resolved = []
    for name, hint in hints.items():
        base, key = typing.get_args(hint)
        if key.metric is not None and key.metric.help is None:
            key = replace(key, metric=replace(key.metric, help=key.doc))
        resolved.append(Field(name, base, key))
    return tuple(resolved)


FIELDS = fields_of(Snapshot)
SNAPSHOT_KEYS: tuple[str, ...] = tuple(f.name for f in FIELDS)
REQUEST_METRIC_FIELDS = tuple(f for f in FIELDS if f.key.request_metric)


def request_metrics(snapshot: Snapshot) -> dict[str, Any]:
    """The `metrics` of a finished validation request: its numbers, as the snapshot has them."""
    values = cast(Mapping[str, Any], snapshot)
    return {f.name: values[f.name] for f in REQUEST_METRIC_FIELDS}
