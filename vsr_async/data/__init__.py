"""Datasets, their checks, the training loader and the demo dataset builder.

The engine needs only: `scan_dataset` → `build_datasets` → `build_train_loader`, plus
`position_after` to resume, and `build_demo_dataset` for the default run.
Imports only the top-level modules (`errors`, `names`) and `config`: never `nn`, `training`,
`runtime`, `files`, `terminal` or `web`.
"""

from vsr_async.data.demo import build_demo_dataset
from vsr_async.data.info import DatasetInfo
from vsr_async.data.layout import detect_layout, scan_dataset
from vsr_async.data.loader import TrainBatch, build_datasets, build_train_loader, collate_train
from vsr_async.data.sampler import ResumableSampler, position_after

__all__ = [
    "DatasetInfo",
    "ResumableSampler",
    "TrainBatch",
    "build_datasets",
    "build_demo_dataset",
    "build_train_loader",
    "collate_train",
    "detect_layout",
    "position_after",
    "scan_dataset",
]
