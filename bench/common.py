"""Shared pieces of the benchmarks: a demo-data config, percentiles, a table printer.

Benchmarks compare within one run (interleaved trials, medians) so that the noise of a shared
machine cancels; they print a table and a final JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsr_async.data.demo import build_demo_dataset  # noqa: E402
from vsr_async.settings import Config, build_config  # noqa: E402

DEMO_DATASET = REPO / "vsr_demo" / "bench-dataset"


def bench_config(run_dir: Path, **overrides: Any) -> Config:
    """The demo model on the demo data, with nothing due (no validation, no checkpoint)."""
    from vsr_async.__main__ import DEMO_SETTINGS

    build_demo_dataset(DEMO_DATASET, scale=3, num_frames=5)
    values = {
        **DEMO_SETTINGS,
        "DATASET_ROOT": str(DEMO_DATASET),
        "DATA_ROOT": str(run_dir),
        "VAL_STEP_EVERY": 10**9,
        "SAVE_STEP_EVERY": 10**9,
        "MAX_STEPS": 10**9,
        "KEYBOARD_ENABLED": False,
        "WEB_PORT": 0,
        **overrides,
    }
    return build_config(values)


async def start_bench_run(
    name: str, overrides: dict[str, Any], *, threads: int | None = None, device: str | None = None
):
    """The real runtime on the demo model with its web panel (idle) and no dashboard, training
    in the background. Returns (run, panel, the task that ends with the run)."""

    import torch

    from vsr_async.runtime.launch import build_run, scan_async
    from web.server import WebPanel

    if threads:
        torch.set_num_threads(threads)  # before the GPU thread starts (it inherits it)
    if device:
        overrides = {**overrides, "DEVICE": device}
    config = bench_config(temp_run_dir(name), **overrides)
    run = build_run(config, await scan_async(config), resume="never", console_log=False)
    panel = WebPanel(run.supervisor, config, run.logging)
    run.supervisor.add_hook(panel)
    return run, panel, await run.start()


def temp_run_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"vsr-bench-{prefix}-"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [header, *[[cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(table):
        print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_result(result: dict[str, Any]) -> None:
    """The final JSON line (machine-readable)."""
    print(json.dumps(result, sort_keys=True))


def machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
