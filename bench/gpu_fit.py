"""Small cards: the reference model with BATCH_SIZE="auto" under a capped GPU memory (issue 7).

For each cap (default 8 GB, then 4 GB: a Tesla P4 and a smaller card), a fresh process limits
PyTorch's allocator with `torch.cuda.set_per_process_memory_fraction`, builds the reference
model (128 features, 32 blocks, 5 LR frames of 180², x3) with EFFECTIVE_BATCH 8, lets the engine
probe its batch plan, trains a few optimizer steps, validates once, and reports the chosen
micro-batch, accumulation, gradient checkpointing, step time, peak memory and any
out-of-memory events. A crash in a cap is reported as such (and fails the benchmark).

    python bench/gpu_fit.py                     # needs CUDA; AMP=auto (bf16 on an H100)
    python bench/gpu_fit.py --amp off           # fp32, as a Pascal card (the P4) would run it
    python bench/gpu_fit.py --caps 8 4 2 --steps 5

The cap limits only the allocator; the CUDA context (~0.5 GB) comes on top, as on a real card.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, machine, print_result, print_table, temp_run_dir

RESULT_PREFIX = "GPU_FIT_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--caps", type=float, nargs="+", default=[8.0, 4.0], help="GPU memory caps in GB"
    )
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per cap")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--no-validate", action="store_true", help="skip the one validation")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per cap")
    parser.add_argument("--one-cap", type=float, help=argparse.SUPPRESS)  # the child process
    return parser.parse_args(argv)


def run_one_cap(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: cap the allocator, fit, train, validate; the measured numbers."""
    import torch

    from vsr_async.runtime.launch import scan
    from vsr_async.settings import build_config
    from vsr_async.training.engine import TrainingEngine

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_data import REFERENCE_SETTINGS, build_reference_dataset

    cap_bytes = int(args.one_cap * 1e9)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(cap_bytes / total, 1.0), 0)
    dataset = build_reference_dataset(REPO / "vsr_demo" / "bench-reference")
    config = build_config(
        {
            **REFERENCE_SETTINGS,
            "BATCH_SIZE": "auto",
            "EFFECTIVE_BATCH": 8,
            "AMP": args.amp,
            "DATASET_ROOT": str(dataset),
            "DATA_ROOT": str(temp_run_dir("gpu-fit")),
        }
    )
    engine = TrainingEngine(config, scan(config))
    started = time.perf_counter()
    plan = engine.ensure_batch_plan()
    probe_s = time.perf_counter() - started
    fitted = plan.to_snapshot()

    for _ in range(args.warmup):
        engine.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.train_step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - started) / args.steps * 1000
    peak_gb = torch.cuda.max_memory_allocated() / 1e9
    reserved_gb = torch.cuda.max_memory_reserved() / 1e9

    tiling = None
    if not args.no_validate:
        result = engine.validate()
        tiling = engine.validation_tiling.to_snapshot() | {"psnr_ki_db": result.psnr_ki_db}
    plan = engine.batch_plan  # after any out-of-memory step
    engine.close()
    return {
        "cap_gb": args.one_cap,
        "precision": engine.precision.mode,
        "fitted": fitted,
        "probe_s": probe_s,
        "micro_batch": plan.micro_batch,
        "accumulation_steps": plan.accumulation_steps,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "step_ms": step_ms,
        "peak_allocated_gb": peak_gb,
        "peak_reserved_gb": reserved_gb,
        "oom_events": len(engine.oom_events),
        "validation": tiling,
    }


def spawn_cap(args: argparse.Namespace, cap: float) -> dict[str, Any]:
    """One cap in its own process (a fresh allocator and CUDA context); never raises."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one-cap",
        str(cap),
        "--amp",
        args.amp,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ] + (["--no-validate"] if args.no_validate else [])
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return {"cap_gb": cap, "crashed": f"timed out after {args.timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line.removeprefix(RESULT_PREFIX))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"cap_gb": cap, "crashed": f"exit {done.returncode}: {tail[0]}"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one_cap is not None:
        print(RESULT_PREFIX + json.dumps(run_one_cap(args)), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_fit.py needs a CUDA device")
    results = []
    for cap in args.caps:
        result = spawn_cap(args, cap)
        results.append(result)
        print(f"cap {cap:g} GB: {json.dumps(result)}", flush=True)

    rows = []
    for r in results:
        if "crashed" in r:
            rows.append([f"{r['cap_gb']:g}", "CRASHED", "", "", "", "", "", r["crashed"]])
            continue
        tiles = (r["validation"] or {}).get("tiles_per_side", "-")
        rows.append(
            [
                f"{r['cap_gb']:g}",
                r["micro_batch"],
                r["accumulation_steps"],
                "on" if r["gradient_checkpointing"] else "off",
                r["step_ms"],
                r["peak_allocated_gb"],
                r["oom_events"],
                f"{r['precision']}, val tiles {tiles}",
            ]
        )
    print_table(
        f'reference model, BATCH_SIZE="auto", EFFECTIVE_BATCH 8, AMP={args.amp}, per memory cap',
        ["cap GB", "micro", "accum", "ckpt", "ms/step", "peak GB", "OOMs", "notes"],
        rows,
    )
    crashed = [r["cap_gb"] for r in results if "crashed" in r]
    print_result(
        {
            "benchmark": "gpu_fit",
            "amp": args.amp,
            "caps": results,
            "crashed_caps": crashed,
            "machine": machine(),
        }
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
