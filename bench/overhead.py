"""Supervisor overhead: steps/s of a bare synchronous loop vs the full supervised runtime.

Same engine (model, optimizer, data loader), same GPU thread: the bare loop calls
`engine.train_step()` back to back inside one call on the worker thread; the supervised loop is
the real `Supervisor` (store updates, TensorBoard on, the web panel on and idle, dashboard off)
driving the same engine step by step. Short trials alternate ABAB…; the ratio is the median of
the per-pair ratios, so slow drifts of a shared machine cancel.

Two numbers come out:
- the wall-clock ratio, supervised/bare steps per second (the budget: >= 0.98);
- the hand-off ratio, from the GPU thread's own timeline in the supervised run: the median step
  time over (step time + the idle gap between one step's end and the next one's start). The gap
  is all the time the supervisor takes away from the GPU thread, so this one is immune to the
  step-time noise of a shared machine.

    python bench/overhead.py --quick      # ~1 minute on a 2-core CPU
    python bench/overhead.py --steps 100 --trials 8 --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from common import machine, median, print_result, print_table, start_bench_run

from vsr_async.runtime.commands import Phase


class StepClock:
    """Wraps `engine.train_step` to record (start, end) of every step on the GPU thread."""

    def __init__(self, engine) -> None:
        self.marks: list[tuple[float, float]] = []
        self._step = engine.train_step
        engine.train_step = self

    def __call__(self):
        started = time.perf_counter()
        result = self._step()
        self.marks.append((started, time.perf_counter()))
        return result

    def take(self) -> tuple[list[float], list[float]]:
        """(step durations, idle gaps between consecutive steps) since the last call."""
        marks, self.marks = self.marks, []
        steps = [end - start for start, end in marks]
        gaps = [marks[i + 1][0] - marks[i][1] for i in range(len(marks) - 1)]
        return steps, gaps


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
    first = supervisor.worker.step + 1  # the bare loop advanced the engine, not the store
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
    run, _, execution = await start_bench_run(
        "overhead", overrides, threads=args.threads, device=args.device
    )
    config = run.config
    await run.supervisor.pause()
    worker = run.supervisor.worker
    device = str(await worker.run_on_engine(lambda engine: engine.device))

    await worker.run_on_engine(lambda engine: bare_loop(engine, args.warmup))  # warm caches
    await supervised_run(run, args.warmup)
    clock = await worker.run_on_engine(StepClock)
    bare, supervised, bare_steps, sup_steps, sup_gaps = [], [], [], [], []
    for trial in range(args.trials):
        order = ("bare", "supervised") if trial % 2 == 0 else ("supervised", "bare")
        for kind in order:
            clock.take()
            if kind == "bare":
                bare.append(
                    args.steps
                    / await worker.run_on_engine(lambda engine: bare_loop(engine, args.steps))
                )
                bare_steps += clock.take()[0]
            else:
                supervised.append(args.steps / await supervised_run(run, args.steps))
                steps, gaps = clock.take()
                sup_steps += steps
                sup_gaps += gaps
        print(
            f"trial {trial + 1}/{args.trials}: bare {bare[-1]:.3f} it/s, "
            f"supervised {supervised[-1]:.3f} it/s",
            flush=True,
        )
    run.supervisor.stop("benchmark done")
    await execution

    ratio = median([s / b for s, b in zip(supervised, bare, strict=True)])
    step_s, gap_s = median(sup_steps), median(sup_gaps)
    handoff_ratio = step_s / (step_s + gap_s)
    print_table(
        "steps/s, bare loop vs supervised runtime (same engine, same thread)",
        ["trial", "bare it/s", "supervised it/s", "ratio"],
        [[i + 1, b, s, s / b] for i, (b, s) in enumerate(zip(bare, supervised, strict=True))]
        + [["median", median(bare), median(supervised), ratio]],  # ratio: median of ratios
    )
    print(
        f"\nGPU thread: median step {median(bare_steps) * 1000:.2f} ms bare, {step_s * 1000:.2f} ms"
        f" supervised; hand-off gap between supervised steps: median {gap_s * 1000:.3f} ms, "
        f"max {max(sup_gaps) * 1000:.2f} ms"
    )
    print(
        f"supervised/bare = {ratio:.4f} wall clock, {handoff_ratio:.4f} from the hand-off gap "
        "(budget >= 0.98)"
    )
    return {
        "benchmark": "overhead",
        "ratio": ratio,
        "handoff_ratio": handoff_ratio,
        "median_step_ms": step_s * 1000,
        "median_bare_step_ms": median(bare_steps) * 1000,
        "median_handoff_gap_ms": gap_s * 1000,
        "bare_steps_per_s": median(bare),
        "supervised_steps_per_s": median(supervised),
        "steps_per_trial": args.steps,
        "trials": args.trials,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "num_workers": config.NUM_WORKERS,
        "machine": machine(),
        "model": f"N_FEATS={config.N_FEATS} N_BLOCKS={config.N_BLOCKS} "
        f"BATCH_SIZE={config.BATCH_SIZE} NUM_FRAMES={config.NUM_FRAMES}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (~1 minute on 2 cores)")
    parser.add_argument("--steps", type=int, default=30, help="steps per trial")
    parser.add_argument("--trials", type=int, default=12, help="trials of each kind")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=10, help="LOG_TBOARD_EVERY")
    parser.add_argument("--device", help="DEVICE (default: auto)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, help="NUM_WORKERS (default: the demo's)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.trials, args.warmup = 12, 12, 5
    print_result(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
