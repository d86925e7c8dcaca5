"""Responsiveness while training and while validating: event-loop lag and `GET /api/snapshot`
latency (p50/p99) at 50 requests/s from another process; step time with and without a
concurrent Statistik write.

    python bench/responsiveness.py --quick     # ~1.5 minutes on a 2-core CPU
    python bench/responsiveness.py --duration 30

Budgets (DESIGN §10): loop lag p99 <= 20 ms, snapshot p99 <= 25 ms, Statistik write adds nothing
measurable to the step time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch
from common import (
    machine,
    median,
    percentile,
    print_result,
    print_table,
    start_bench_run,
    temp_run_dir,
)

from vsr_async.files.statistics import StatisticsWriter
from vsr_async.runtime.commands import Trigger

PROBE_INTERVAL_S = 0.005


class LagProbe:
    """Sleeps PROBE_INTERVAL_S over and over; the overshoot is the loop's lag."""

    def __init__(self, store) -> None:
        self.store = store
        self.samples: list[tuple[float, float, bool]] = []  # (time, lag s, validating)
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL_S)
            now = time.monotonic()
            self.samples.append(
                (now, now - before - PROBE_INTERVAL_S, self.store.validation.running)
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


class ValidationTimeline:
    """When validation ran (CLOCK_MONOTONIC intervals), to attribute client samples."""

    def __init__(self, store) -> None:
        self.store = store
        self.intervals: list[list[float]] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        version, running = self.store.version, False
        while True:
            version = await self.store.wait_for_change(version, 1.0)
            now = self.store.validation.running
            if now and not running:
                self.intervals.append([time.monotonic(), float("inf")])
            if running and not now:
                self.intervals[-1][1] = time.monotonic()
            running = now

    def covers(self, start: float, end: float) -> bool:
        return any(a <= start and end <= b for a, b in self.intervals)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def http_load(url: str, rate: float, duration: float) -> list[tuple[float, float, int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("http_load.py")),
        url,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return [tuple(s) for s in json.loads(out)]


async def keep_validating(supervisor, until: float) -> int:
    """Request validations back to back until `until` (monotonic)."""
    count = 0
    while time.monotonic() < until:
        request = await supervisor.request_validation(Trigger.WEB)
        await request.result
        count += 1
    return count


async def next_step(store) -> float:
    """Wait for the next step completion (no validation in between); its time."""
    version, step = store.version, store.progress.step
    while store.progress.step == step or store.validation.running:
        version = await store.wait_for_change(version, 5)
    return time.monotonic()


async def statistik_write_effect(run, pairs: int) -> tuple[list[float], list[float]]:
    """Duration of steps during which one Statistik write runs vs steps without one (ABAB).

    A write is submitted right at a step boundary — as after a validation — and awaited before
    the next plain step is timed, so the two kinds never overlap.
    """
    writer = StatisticsWriter(temp_run_dir("writes"))
    writer.start()
    plain, writing = [], []
    for i in range(2 * pairs):
        with_write = i % 2 == 0
        started = await next_step(run.store)
        written = writer.submit(i, run.store.snapshot()) if with_write else None
        (writing if with_write else plain).append(await next_step(run.store) - started)
        if written is not None:
            await written
    await writer.close()
    return plain, writing


def summarize(values: list[float]) -> tuple[float, float]:
    return percentile(values, 50) * 1000, percentile(values, 99) * 1000


async def measure(args: argparse.Namespace) -> dict:
    run, panel, execution = await start_bench_run(
        "responsiveness", {"LOG_TBOARD_EVERY": 10}, threads=args.threads, device=args.device
    )
    url = f"{panel.url}api/snapshot"
    probe, timeline = LagProbe(run.store), ValidationTimeline(run.store)
    probe.start()
    timeline.start()

    # phase 1: training only
    training_http = await http_load(url, args.rate, args.duration)
    # phase 2: validating back to back (a short step between validations)
    validating_until = time.monotonic() + args.duration
    validations, validating_http = await asyncio.gather(
        keep_validating(run.supervisor, validating_until),
        http_load(url, args.rate, args.duration),
    )
    probe.stop()
    timeline.stop()
    plain, writing = await statistik_write_effect(run, args.pairs)
    run.supervisor.stop("benchmark done")
    await execution

    lag_train = [lag for t, lag, v in probe.samples if not v]
    lag_val = [lag for t, lag, v in probe.samples if v]
    http = training_http + validating_http
    bad = [s for s in http if s[2] != 200]
    snap_train = [lat for sent, lat, _ in training_http if not timeline.covers(sent, sent + lat)]
    snap_val = [lat for sent, lat, _ in http if timeline.covers(sent, sent + lat)]
    rows = []
    for name, lags, snaps in (
        ("training", lag_train, snap_train),
        ("validating", lag_val, snap_val),
    ):
        lag50, lag99 = summarize(lags)
        s50, s99 = summarize(snaps)
        rows.append([name, len(lags), lag50, lag99, len(snaps), s50, s99])
    print_table(
        f"event-loop lag and GET /api/snapshot latency at {args.rate:g} req/s (ms)",
        ["phase", "lag n", "lag p50", "lag p99", "GET n", "GET p50", "GET p99"],
        rows,
    )
    write_ratio = median(writing) / median(plain)
    print_table(
        f"step time (ms) with and without a concurrent Statistik write ({args.pairs} pairs)",
        ["", "no write", "with write"],
        [
            ["median", median(plain) * 1000, median(writing) * 1000],
            ["p90", percentile(plain, 90) * 1000, percentile(writing, 90) * 1000],
        ],
    )
    print(
        f"\nstep time with write / without = {write_ratio:.4f}; {validations} validations; "
        f"{len(bad)} failed requests"
    )
    return {
        "benchmark": "responsiveness",
        "rate_per_s": args.rate,
        "lag_ms": {
            "training": {"p50": rows[0][2], "p99": rows[0][3]},
            "validating": {"p50": rows[1][2], "p99": rows[1][3]},
        },
        "snapshot_ms": {
            "training": {"p50": rows[0][5], "p99": rows[0][6], "n": rows[0][4]},
            "validating": {"p50": rows[1][5], "p99": rows[1][6], "n": rows[1][4]},
        },
        "failed_requests": len(bad),
        "step_time_write_ratio": write_ratio,
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--pairs", type=int, default=40, help="steps with/without a write")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.pairs = 15.0, 20
    print_result(asyncio.run(measure(args)))


if __name__ == "__main__":
    main()
