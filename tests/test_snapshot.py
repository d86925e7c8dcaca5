"""The snapshot's one definition (`vsr_async/runtime/snapshot.py`): the store fills exactly its
keys, in its order, with values of its types, and the OpenAPI schema and the Prometheus table are
the definition's, not lists of their own. (The contract's key names themselves are pinned
literally in test_run.py.)"""

from __future__ import annotations

import typing
from types import NoneType, UnionType

from vsr_async.records import (
    AdaptiveMode,
    AdaptiveReport,
    ImageMetrics,
    LossMeans,
    LossWeights,
    StepResult,
    StepStats,
    ValidationResult,
)
from vsr_async.runtime.snapshot import (
    FIELDS,
    REQUEST_METRIC_FIELDS,
    SNAPSHOT_KEYS,
    Snapshot,
    ValidationImage,
    request_metrics,
)
from vsr_async.runtime.store import StatsStore
from web.metrics import EXPORTED, StoreCollector
from web.schemas import SNAPSHOT_SCHEMA, VALIDATION_REQUEST


def stats(**changes: typing.Any) -> StepStats:
    values: dict[str, typing.Any] = {
        # gradient non-finite: null in the snapshot
        "losses": LossMeans(total=0.5, l1=0.1, ms=0.2, gradient=float("nan"), perceptual=0.3),
        "grad_norm": 1.5,
        "weights": LossWeights(1.0, 0.5, 0.2, 0.1),
        "grad_clip": 1.0,
        "adaptive": AdaptiveReport(AdaptiveMode.STABLE, False, 0, 2, True, -0.01),
        "activity": {"Backward_Block_01": 0.5, "Final_Fusion": float("inf")},
        "adam_momentum_avg": 1e-4,
        "vram_peak_gb": None,
        "vram_reserved_gb": None,
        "host_memory_gb": 1.2,
        "nonfinite_steps": 1,
        "nonfinite_streak": 0,
    }
    return StepStats(**{**values, **changes})


def stores() -> dict[str, StatsStore]:
    """A store before the first step, and one after steps and a validation."""
    fresh = StatsStore(run_id="fresh", step_max=100)
    full = StatsStore(run_id="full", step_max=100)
    for step, now in ((5, 1.0), (6, 2.5)):
        result = StepResult(
            step=step,
            epoch=0,
            epoch_step=step,
            epoch_steps_total=10,
            learning_rate=1e-3,
            lr_phase="warmup",
            skipped_files=("broken.png",),
            stats=stats() if step == 5 else None,
        )
        full.publish_step(result, now=now)
    images = (
        ImageMetrics("a.png", 25.0, 27.0, 0.80, 0.85, 0.50, 0.60),
        ImageMetrics("b.png", 26.0, 28.0, 0.80, 0.90, 0.55, 0.65),
    )
    full.publish_validation(
        ValidationResult(images=images, loss=0.05, duration_s=1.5, used_ema=True),
        step=6,
        trigger="web",
    )
    full.set_phase("running")
    return {"fresh": fresh, "full": full}


def test_store_fills_exactly_the_definitions_keys_in_its_order() -> None:
    for name, store in stores().items():
        snapshot = store.snapshot()
        assert list(snapshot) == list(SNAPSHOT_KEYS), name
        for image in snapshot["validation_images"]:
            assert list(image) == list(ValidationImage.__annotations__)
    assert len(stores()["full"].snapshot()["validation_images"]) == 2


def mismatches(value: typing.Any, annotation: typing.Any, path: str) -> list[str]:
    """Where `value` is not of the definition's type (a JSON number may be an int or a float)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return []
    if typing.is_typeddict(annotation):
        hints = typing.get_type_hints(annotation)
        if not isinstance(value, dict) or set(value) != set(hints):
            return [f"{path}: not a {annotation.__name__}"]
        return [m for key, hint in hints.items() for m in mismatches(value[key], hint, path + key)]
    if origin is UnionType:
        options = [mismatches(value, arg, path) for arg in args]
        return [] if [] in options else [f"{path}: {value!r} is not {annotation}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            m for i, item in enumerate(value) for m in mismatches(item, args[0], f"{path}[{i}]")
        ]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return [f"{path}: not a dict with str keys"]
        return [m for k, item in value.items() for m in mismatches(item, args[1], f"{path}.{k}")]
    accepted = (int, float) if annotation is float else annotation
    if (isinstance(value, bool) and annotation is not bool) or not isinstance(value, accepted):
        return [f"{path}: {value!r} is not {annotation.__name__}"]
    return []


def test_store_values_have_the_definitions_types() -> None:
    for name, store in stores().items():
        assert mismatches(store.snapshot(), Snapshot, "") == [], name
    full = stores()["full"].snapshot()
    assert full["gradient_loss_value"] is None  # NaN became null, as the type allows
    assert full["layer_activity_map"] == {"Backward_Block_01": 0.5, "Final_Fusion": None}


def test_the_openapi_schema_is_the_definition() -> None:
    assert SNAPSHOT_SCHEMA["required"] == sorted(SNAPSHOT_KEYS)
    assert list(SNAPSHOT_SCHEMA["properties"]) == list(SNAPSHOT_KEYS)
    assert set(Snapshot.__required_keys__) == set(SNAPSHOT_KEYS)  # no optional keys
    for field in FIELDS:
        assert field.key.doc, f"{field.name} has no line of meaning"
        assert SNAPSHOT_SCHEMA["properties"][field.name]["description"] == field.key.doc
    assert SNAPSHOT_SCHEMA["properties"]["run_phase"]["enum"][0] == "starting"
    assert SNAPSHOT_SCHEMA["properties"]["step_current"] == {
        "type": "integer",
        "minimum": 0,
        "description": "Optimizer steps completed.",
    }


def test_the_prometheus_table_is_the_definitions_numeric_keys() -> None:
    types = {field.name: field.type for field in FIELDS}
    fed = [key for exported in EXPORTED for _, key in exported.samples]
    assert len(fed) == len(set(fed)), "a key feeds one metric"
    for exported in EXPORTED:
        metric = exported.metric
        assert metric.name.startswith("vsr_") and metric.help
        if metric.label is None:
            assert len(exported.samples) == 1, metric.name
        for label_value, key in exported.samples:
            value_type = types[key]
            if metric.label is not None and label_value is None:  # one sample per map entry
                value_type = typing.get_args(value_type)[1]
            scalars = set(typing.get_args(value_type)) - {NoneType} or {value_type}
            assert scalars <= {int, float, bool}, f"{key} is not a number"
    names = {exported.metric.name for exported in EXPORTED}
    assert {"vsr_step", "vsr_loss", "vsr_validations", "vsr_layer_activity"} <= names


def test_a_validation_request_reports_the_definitions_request_metrics() -> None:
    """GET /api/requests/{id} `metrics`: the snapshot keys marked `request_metric`, as the
    snapshot has them; the key set is part of the HTTP answer, so it is pinned here."""
    assert {f.name for f in REQUEST_METRIC_FIELDS} == {
        "quality_lr_value",
        "quality_ki_value",
        "quality_improvement_value",
        "psnr_lr_db",
        "psnr_ki_db",
        "ssim_lr",
        "ssim_ki",
        "psnr_y_lr_db",
        "psnr_y_ki_db",
        "ssim_y_lr",
        "ssim_y_ki",
        "validation_loss_value",
    }
    full = stores()["full"].snapshot()
    metrics, values = request_metrics(full), dict(full)
    assert metrics == {f.name: values[f.name] for f in REQUEST_METRIC_FIELDS}
    assert metrics["quality_ki_value"] is not None
    schema = VALIDATION_REQUEST["properties"]["metrics"]
    assert schema["type"] == ["object", "null"] and schema["required"] == sorted(metrics)


async def test_a_run_reports_world_size_1_and_its_global_batch(start_run) -> None:
    """Without torchrun a run is one rank, and a step's samples are BATCH_SIZE x ACCUMULATION."""
    run = await start_run(ACCUMULATION_STEPS=3)
    snapshot = run.store.snapshot()
    assert snapshot["world_size"] == 1
    assert snapshot["global_batch"] == run.config.BATCH_SIZE * run.config.ACCUMULATION_STEPS == 6
    assert snapshot["runtime"]["batch_plan"] is not None  # the other facts stay in `runtime`
    assert not {"world_size", "global_batch"} & set(snapshot["runtime"])  # each fact once


def test_the_job_keys_come_from_the_runtime_facts() -> None:
    """A torchrun job's facts (here fed to the store as the supervisor does) are the snapshot's
    `world_size` and `global_batch`, and Prometheus gauges; before them both are null."""
    store = StatsStore(run_id="job", step_max=10)
    before = store.snapshot()
    assert before["world_size"] is None and before["global_batch"] is None
    store.set_extra(world_size=2, global_batch=8, precision="fp32")
    snapshot = store.snapshot()
    assert (snapshot["world_size"], snapshot["global_batch"]) == (2, 8)
    assert snapshot["runtime"] == {"precision": "fp32"}
    assert mismatches(snapshot, Snapshot, "") == []
    samples = {
        sample.name: sample.value
        for family in StoreCollector(store, lambda: 0).collect()
        for sample in family.samples
    }
    assert samples["vsr_world_size"] == 2 and samples["vsr_global_batch_samples"] == 8
    assert "vsr_world_size" not in {
        sample.name
        for family in StoreCollector(StatsStore(run_id="x", step_max=1), lambda: 0).collect()
        for sample in family.samples
    }
