"""Supervisor overhead: steps/s of a bare synchronous loop vs the full supervised runtime.

Same engine (model, optimizer, data loader), same GPU thread: the bare loop calls
`engine.train_step()` back to back inside one call on the worker thread; the supervised loop is
the real `Supervisor` (store updates, TensorBoard on, the web panel on and idle, dashboard off)
driving the same engine step by step. Trials are interleaved (ABBA) and the medians compared.

    python bench/overhead.py --quick      # ~1 minute on a 2-core CPU
    python bench/overhead.py --steps 200 --trials 5 --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from common import (
    bench_config,
    machine,
    median,
    print_result,
    print_table,
    temp_run_dir,
)

from vsr_async.commands import Phase
from vsr_async.launch import build_run, scan_async
from web.server import WebPanel


def bare_loop(engine, steps: int) -> float:
    """On the GPU thread: `steps` optimizer steps with nothing around them; seconds taken."""
    started = time.perf_counter()
    for _ in range(steps):
        engine.train_step()
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - started


async def supervised_run(run, steps: int) -> float:
    """Resume the supervisor for `steps` steps (timed from the first to the last step done)."""
    store, supervisor = run.store, run.supervisor
    first = supervisor.worker.engine.step + 1  # the bare loop advanced the engine, not the store
    supervisor.resume()
    version = store.version
    while store.progress.step < first:
        version = await store.wait_for_change(version, 5)
    started = time.perf_counter()
    while store.progress.step < first + steps:
        version = await store.wait_for_change(version, 5)
    elapsed = time.perf_counter() - started
    await supervisor.pause()
    while supervisor.phase is not Phase.PAUSED:
        version = await store.wait_for_change(version, 5)
    return elapsed


async def measure(args: argparse.Namespace) -> dict:
    overrides = {"LOG_TBOARD_EVERY": args.log_every}
    if args.workers is not None:
        overrides["NUM_WORKERS"] = args.workers
    if args.threads:
        torch.set_num_threads(args.threads)  # before the GPU thread starts (it inherits it)
    if args.device:
        overrides["DEVICE"] = args.device
    config = bench_config(temp_run_dir("overhead"), **overrides)
    info = await scan_async(config)
    run = build_run(config, info, resume="never", console_log=False)
    run.supervisor.add_service(WebPanel(run.supervisor, config, run.logging))
    execution = asyncio.create_task(run.execute())
    await run.supervisor.started.wait()
    await run.supervisor.pause()
    worker, engine = run.supervisor.worker, run.supervisor.worker.engine

    await worker.call(bare_loop, engine, args.warmup)  # warm caches, allocator, loader
    await supervised_run(run, args.warmup)
    bare, supervised = [], []
    for trial in range(args.trials):
        order = ("bare", "supervised") if trial % 2 == 0 else ("supervised", "bare")  # ABBA
        for kind in order:
            if kind == "bare":
                bare.append(args.steps / await worker.call(bare_loop, engine, args.steps))
            else:
                supervised.append(args.steps / await supervised_run(run, args.steps))
        print(
            f"trial {trial + 1}/{args.trials}: bare {bare[-1]:.3f} it/s, "
            f"supervised {supervised[-1]:.3f} it/s",
            flush=True,
        )
    run.supervisor.stop("benchmark done")
    await execution
    # Each trial pairs adjacent measurements (ABBA), so the median of the per-trial ratios
    # cancels slow drifts of a shared machine better than a ratio of medians.
    ratio = median([s / b for s, b in zip(supervised, bare, strict=True)])
    print_table(
        "steps/s, bare loop vs supervised runtime (same engine, same thread)",
        ["trial", "bare it/s", "supervised it/s", "ratio"],
        [[i + 1, b, s, s / b] for i, (b, s) in enumerate(zip(bare, supervised, strict=True))]
        + [["median", median(bare), median(supervised), ratio]],  # ratio: median of ratios
    )
    print(f"\nsupervised/bare = {ratio:.4f} (budget >= 0.98)")
    return {
        "benchmark": "overhead",
        "ratio": ratio,
        "bare_steps_per_s": median(bare),
        "supervised_steps_per_s": median(supervised),
        "steps_per_trial": args.steps,
        "trials": args.trials,
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "num_workers": config.NUM_WORKERS,
        "machine": machine(),
        "model": f"N_FEATS={config.N_FEATS} N_BLOCKS={config.N_BLOCKS} "
        f"BATCH_SIZE={config.BATCH_SIZE} NUM_FRAMES={config.NUM_FRAMES}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (~1 minute on 2 cores)")
    parser.add_argument("--steps", type=int, default=60, help="steps per trial")
    parser.add_argument("--trials", type=int, default=5, help="trials of each kind")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=10, help="LOG_TBOARD_EVERY")
    parser.add_argument("--device", help="DEVICE (default: auto)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, help="NUM_WORKERS (default: the demo's)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.trials, args.warmup = 25, 6, 5
    print_result(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
