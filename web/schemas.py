"""JSON Schemas of the API's bodies, for the OpenAPI document (`openapi.py`, which lays out the
routes that answer with them).

The snapshot schema is derived from the snapshot's one definition (`vsr_async/runtime/snapshot.py`):
every contract key (DESIGN §3) with its JSON type, bounds and meaning, so a fuzzing run checks the
answers against the contract, not just against "some object".
"""

from __future__ import annotations

import dataclasses
import types
import typing
from types import NoneType
from typing import Any

from vsr_async.records import LossMeans
from vsr_async.runtime.snapshot import FIELDS, REQUEST_METRIC_FIELDS, Field, fields_of
from vsr_async.settings import Config, live_keys

JsonSchema = dict[str, Any]  # a JSON Schema object; openapi.py takes these apart and extends them

NULLABLE_NUMBER: JsonSchema = {"type": ["number", "null"]}
NULLABLE_INT: JsonSchema = {"type": ["integer", "null"]}
NULLABLE_STRING: JsonSchema = {"type": ["string", "null"]}

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", NoneType: "null"}


def json_schema(annotation: Any) -> JsonSchema:
    """The JSON Schema of one of the snapshot definition's Python types."""
    if annotation in JSON_TYPES:
        return {"type": JSON_TYPES[annotation]}
    if typing.is_typeddict(annotation):
        return object_schema(fields_of(annotation))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType:  # `X | None` only: a nullable scalar
        return {"type": [json_schema(arg)["type"] for arg in args]}
    if origin is list:
        return {"type": "array", "items": json_schema(args[0])}
    if origin is dict and args[1] is Any:
        return {"type": "object"}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(args[1])}
    raise TypeError(f"no JSON Schema for {annotation!r}")


def property_schema(field: Field) -> JsonSchema:
    key = field.key
    schema = {**json_schema(field.type), "description": key.doc}
    if key.minimum is not None:
        schema["minimum"] = key.minimum
    if key.maximum is not None:
        schema["maximum"] = key.maximum
    if key.enum is not None:  # a nullable key's enum takes null too
        schema["enum"] = [*key.enum, *([None] if "null" in schema["type"] else [])]
    return schema


def object_schema(fields: tuple[Field, ...]) -> JsonSchema:
    return {
        "type": "object",
        "required": sorted(f.name for f in fields),
        "properties": {f.name: property_schema(f) for f in fields},
    }


SNAPSHOT_SCHEMA: JsonSchema = object_schema(FIELDS)

LOSS_POINT: JsonSchema = {
    "type": "object",
    "required": ["step", "total", "learning_rate"],
    "properties": {
        "step": {"type": "integer"},
        "learning_rate": NULLABLE_NUMBER,
        **{k: NULLABLE_NUMBER for k in (*LossMeans._fields, "grad_norm")},  # total, each term
    },
}
QUALITY_POINT: JsonSchema = {
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
VALIDATION_REQUEST: JsonSchema = {
    "type": "object",
    "required": ["request_id", "status", "trigger"],
    "properties": {
        "request_id": {"type": "string"},
        "status": {"enum": ["queued", "running", "done", "failed"]},
        "trigger": {"enum": ["schedule", "keyboard", "web"]},
        "step": NULLABLE_INT,
        "metrics": {**object_schema(REQUEST_METRIC_FIELDS), "type": ["object", "null"]},
        "statistics_file": NULLABLE_STRING,
        "statistics_error": NULLABLE_STRING,
        "error": NULLABLE_STRING,
    },
}
COMMAND_ACCEPTED: JsonSchema = {
    "type": "object",
    "required": ["command", "status"],
    "properties": {"command": {"type": "string"}, "status": {"const": "queued"}},
}
# What GET /api/requests/{id} answers: `kind` tells a validation from a config change.
REQUEST_SCHEMAS: dict[str, JsonSchema] = {
    "ValidationRequest": {
        **VALIDATION_REQUEST,
        "required": [*VALIDATION_REQUEST["required"], "kind"],
        "properties": {**VALIDATION_REQUEST["properties"], "kind": {"const": "validation"}},
    },
    "ConfigRequest": {
        "type": "object",
        "required": ["request_id", "kind", "status", "changes", "applied", "step", "error"],
        "properties": {
            "request_id": {"type": "string"},
            "kind": {"const": "config"},
            "status": {"enum": ["queued", "running", "done", "failed"]},
            "changes": {"type": "object", "description": "as accepted (normalized values)"},
            "applied": {
                "type": ["object", "null"],
                "description": "the values in force after it applied (status done)",
            },
            "step": {
                "type": ["integer", "null"],
                "description": "the step after which it applied or failed",
            },
            "error": {"type": ["string", "null"], "description": "why it failed (also logged)"},
        },
    },
}
CONFIG_ACCEPTED: JsonSchema = {
    "type": "object",
    "required": ["command", "status", "request_id", "url", "changes"],
    "properties": {
        **COMMAND_ACCEPTED["properties"],
        "request_id": {"type": "string"},
        "url": {"type": "string", "description": "/api/requests/<request_id>"},
        "changes": {"type": "object"},
        "applies": {"type": "string"},
    },
}
STATISTICS_LIST: JsonSchema = {
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
STRIPS: JsonSchema = {
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


def config_change_schema() -> JsonSchema:
    hints = typing.get_type_hints(Config)
    properties = {}
    for f in dataclasses.fields(Config):
        if f.name not in live_keys():
            continue
        schema: JsonSchema = {"type": "integer" if hints[f.name] is int else "number"}
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
