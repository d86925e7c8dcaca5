"""JSON Schemas of the API's bodies, for the OpenAPI document (`openapi.py`).

The snapshot schema lists every contract key (DESIGN §3) with its JSON type, so a fuzzing run
checks the answers against the contract, not just against "some object".
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from vsr_async.settings import Config, live_keys

NULLABLE_NUMBER = {"type": ["number", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_BOOL = {"type": ["boolean", "null"]}

SNAPSHOT_FIELDS: dict[str, dict[str, Any]] = {
    "schema_version": {"type": "integer"},
    "run_id": {"type": "string"},
    **{
        k: {"type": "integer", "minimum": 0}
        for k in (
            "step_current",
            "step_max",
            "epoch_num",
            "epoch_step_current",
            "epoch_step_total",
            "validation_count",
            "nonfinite_steps_skipped",
            "corrupt_files_skipped",
        )
    },
    **{
        k: NULLABLE_NUMBER
        for k in (
            "learning_rate_value",
            "total_loss_value",
            "l1_loss_value",
            "ms_loss_value",
            "gradient_loss_value",
            "perceptual_loss_value",
            "l1_weight_current",
            "ms_weight_current",
            "gradient_weight_current",
            "perceptual_weight_current",
            "gradient_clip_val",
            "grad_norm_value",
            "adaptive_perceptual_trend",
            "quality_lr_value",
            "quality_ki_value",
            "quality_improvement_value",
            "quality_ki_to_gt_value",
            "quality_lr_to_gt_value",
            "validation_loss_value",
            "best_quality_ever",
            "iteration_duration",
            "vram_usage_gb",
            "vram_reserved_gb",
            "host_memory_gb",
            "adam_momentum_avg",
            "psnr_lr_db",
            "psnr_ki_db",
            "psnr_gain_db",
            "ssim_lr",
            "ssim_ki",
            "validation_duration_s",
        )
    },
    **{
        k: NULLABLE_INT
        for k in (
            "adaptive_cooldown_remaining",
            "adaptive_plateau_counter",
            "best_quality_step",
            "validation_step",
        )
    },
    **{
        k: NULLABLE_STRING
        for k in (
            "lr_phase_name",
            "adaptive_mode",
            "eta_total_formatted",
            "eta_epoch_formatted",
            "stop_reason",
            "validation_trigger",
            "validated_at",
            "statistics_file",
            "last_statistics_written",
            "last_statistics_error",
            "last_checkpoint",
        )
    },
    **{
        k: NULLABLE_BOOL
        for k in ("adaptive_is_cooldown", "adaptive_lr_boost_available", "validation_used_ema")
    },
    **{
        k: {"type": "boolean"}
        for k in ("training_active", "validation_running", "training_paused", "training_stopped")
    },
    "validation_progress": {"type": "number", "minimum": 0, "maximum": 1},
    "run_phase": {
        "type": "string",
        "enum": ["starting", "running", "paused", "validating", "stopping", "stopped"],
    },
    "last_update_time": {"type": "string"},
    "layer_activity_map": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
    "corrupt_files": {"type": "array", "items": {"type": "string"}},
    "pending_commands": {"type": "array", "items": {"type": "string"}},
    "validation_images": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "psnr_lr_db": NULLABLE_NUMBER,
                "psnr_ki_db": NULLABLE_NUMBER,
                "ssim_lr": NULLABLE_NUMBER,
                "ssim_ki": NULLABLE_NUMBER,
                "quality_lr": NULLABLE_NUMBER,
                "quality_ki": NULLABLE_NUMBER,
            },
        },
    },
    "runtime": {"type": "object"},
    "config_live": {"type": "object"},
}

LOSS_POINT = {
    "type": "object",
    "required": ["step", "total", "learning_rate"],
    "properties": {
        "step": {"type": "integer"},
        "learning_rate": NULLABLE_NUMBER,
        **{
            k: NULLABLE_NUMBER for k in ("total", "l1", "ms", "gradient", "perceptual", "grad_norm")
        },
    },
}
QUALITY_POINT = {
    "type": "object",
    "required": ["step", "quality_lr", "quality_ki", "improvement"],
    "properties": {
        "step": {"type": "integer"},
        **{
            k: NULLABLE_NUMBER
            for k in (
                "quality_lr",
                "quality_ki",
                "improvement",
                "psnr_lr_db",
                "psnr_ki_db",
                "ssim_lr",
                "ssim_ki",
                "validation_loss",
            )
        },
    },
}
VALIDATION_REQUEST = {
    "type": "object",
    "required": ["request_id", "status", "trigger"],
    "properties": {
        "request_id": {"type": "string"},
        "status": {"enum": ["queued", "running", "done", "failed"]},
        "trigger": {"enum": ["schedule", "keyboard", "web"]},
        "step": NULLABLE_INT,
        "metrics": {"type": ["object", "null"]},
        "statistics_file": NULLABLE_STRING,
        "statistics_error": NULLABLE_STRING,
        "error": NULLABLE_STRING,
    },
}
COMMAND_ACCEPTED = {
    "type": "object",
    "required": ["command", "status"],
    "properties": {"command": {"type": "string"}, "status": {"const": "queued"}},
}
STATISTICS_LIST = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "step", "size_bytes", "modified", "url"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^Statistik_[0-9]+\.json$"},
                    "step": {"type": "integer", "minimum": 0},
                    "size_bytes": {"type": "integer", "minimum": 0},
                    "modified": {"type": "string"},
                    "url": {"type": "string"},
                },
            },
        }
    },
}
STRIPS = {
    "type": "object",
    "required": ["validation_count", "images"],
    "properties": {
        "validation_count": {"type": "integer", "minimum": 0},
        "validation_step": NULLABLE_INT,
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "name", "width", "height", "url"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "name": {"type": "string"},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "url": {"type": "string"},
                },
            },
        },
    },
}


def config_change_schema() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    properties = {}
    for f in dataclasses.fields(Config):
        if f.name not in live_keys():
            continue
        schema: dict[str, Any] = {"type": "integer" if hints[f.name] is int else "number"}
        if f.metadata.get("lo") is not None:
            schema["minimum"] = f.metadata["lo"]
        if f.metadata.get("hi") is not None:
            schema["maximum"] = f.metadata["hi"]
        properties[f.name] = schema
    return {
        "type": "object",
        "minProperties": 1,
        "properties": properties,
        "additionalProperties": False,
        "description": "KEY: value pairs of live keys; other keys get 400 (unknown) or 409 "
        "(start-only). MIN_LR must stay <= MAX_LR.",
    }
