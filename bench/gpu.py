"""GPU step time: the project's defaults vs the predecessor's configuration, same model.

Reference workload (DESIGN §10): 128 features, 32 blocks, batch 4, 5 LR frames of 180², x3.
- defaults: bf16 autocast (AMP=auto on capability >= 8.0), channels_last, no checkpointing,
  no syncs outside the logging cadence (optionally --compile);
- predecessor: fp32, gradient checkpointing, one device→host sync per residual block per step.
Both run the real `TrainingEngine.train_step` on the one GPU thread, interleaved (ABBA), median
of >= 3 trials. Also: device→host syncs counted in non-logging steps
(`torch.cuda.set_sync_debug_mode`), peak memory, and data-loader throughput vs the step rate.

    python bench/gpu.py --quick          # needs CUDA; ~3 minutes on an H100
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings
from pathlib import Path

import torch
from common import REPO, machine, median, print_result, print_table, temp_run_dir
from reference_data import FRAMES, GT_SIZE, REFERENCE_SETTINGS, SCALE, build_reference_dataset

from vsr_async.data.loader import build_datasets, build_train_loader
from vsr_async.nn.model import ResBlock
from vsr_async.runtime.launch import scan
from vsr_async.settings import build_config
from vsr_async.training.engine import TrainingEngine


def make_engine(dataset: Path, **overrides) -> TrainingEngine:
    config = build_config(
        {
            **REFERENCE_SETTINGS,
            "DATASET_ROOT": str(dataset),
            "DATA_ROOT": str(temp_run_dir("gpu")),
            **overrides,
        }
    )
    return TrainingEngine(config, scan(config))


def add_block_syncs(engine: TrainingEngine) -> None:
    """The predecessor read every block's activity with .item(): one sync per block per frame."""

    def sync(module, inputs, output) -> None:
        output.detach().abs().mean().item()

    for module in engine.model.modules():
        if isinstance(module, ResBlock):
            module.register_forward_hook(sync)


def timed_steps(engine: TrainingEngine, steps: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        engine.train_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def count_syncs(engine: TrainingEngine, steps: int) -> int:
    """Synchronising calls in `steps` non-logging steps (sync debug mode "warn")."""
    count = 0
    for _ in range(steps):
        if engine.is_logging_step(engine.step + 1):
            engine.train_step()
            continue
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.train_step()
        torch.cuda.set_sync_debug_mode("default")
        count += sum("synchroniz" in str(w.message).lower() for w in caught)
    return count


def loader_rate(engine: TrainingEngine, batches: int) -> float:
    """Batches per second the data loader alone delivers (the GPU idle)."""
    train_set, _ = build_datasets(engine.config, scan(engine.config))
    loader = build_train_loader(
        train_set,
        batch_size=engine.config.BATCH_SIZE,
        num_workers=engine.config.NUM_WORKERS,
        pin_memory=True,
        seed=1,
    )
    iterator = iter(loader)
    next(iterator)  # workers up
    started = time.perf_counter()
    for _ in itertools.islice(iterator, batches):
        pass
    return batches / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time COMPILE=true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.trials = 15, 3
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    dataset = build_reference_dataset(REPO / "vsr_demo" / "bench-reference")

    configs = {
        "defaults": {},
        "predecessor": {"AMP": "off", "CHANNELS_LAST": False, "GRADIENT_CHECKPOINTING": True},
    }
    if args.compile:
        configs["defaults+compile"] = {"COMPILE": True}
    engines = {name: make_engine(dataset, **over) for name, over in configs.items()}
    add_block_syncs(engines["predecessor"])
    for engine in engines.values():
        timed_steps(engine, 5)  # warm-up (cuDNN autotune, allocator, compile)

    times: dict[str, list[float]] = {name: [] for name in engines}
    for trial in range(args.trials):
        order = list(engines) if trial % 2 == 0 else list(reversed(engines))  # ABBA
        for name in order:
            times[name].append(timed_steps(engines[name], args.steps))
        print(
            f"trial {trial + 1}: " + ", ".join(f"{n} {times[n][-1] * 1000:.1f} ms" for n in order),
            flush=True,
        )

    defaults = engines["defaults"]
    syncs = count_syncs(defaults, 2 * defaults.config.LOG_TBOARD_EVERY)
    torch.cuda.reset_peak_memory_stats()
    timed_steps(defaults, 5)
    peak_gb = torch.cuda.max_memory_allocated() / 1e9
    loader_bps = loader_rate(defaults, 50)
    step_ms = {name: median(t) * 1000 for name, t in times.items()}
    speedup = step_ms["predecessor"] / step_ms["defaults"]
    print_table(
        f"ms per optimizer step, reference model ({GT_SIZE // SCALE}² x{SCALE}, {FRAMES} frames)",
        ["config", "median ms", "min ms", "stdev ms", "precision"],
        [
            [n, step_ms[n], min(t) * 1000, statistics.pstdev(t) * 1000, engines[n].precision.mode]
            for n, t in times.items()
        ],
    )
    print(
        f"\ndefaults are {speedup:.2f}x faster than the predecessor's configuration "
        "(budget >= 2.5x)"
    )
    print(f"device->host syncs in non-logging steps: {syncs} (budget 0)")
    print(f"peak memory (defaults): {peak_gb:.2f} GB")
    print(f"loader: {loader_bps:.1f} batches/s vs {1000 / step_ms['defaults']:.1f} steps/s needed")
    print_result(
        {
            "benchmark": "gpu",
            "step_ms": step_ms,
            "speedup": speedup,
            "syncs_in_non_logging_steps": syncs,
            "peak_memory_gb": peak_gb,
            "loader_batches_per_s": loader_bps,
            "steps_per_s": 1000 / step_ms["defaults"],
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
