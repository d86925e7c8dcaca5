"""Scale-out costs, measured within one run (`python bench/distributed.py`).

1. The command channel's cost: two ranks train the same DDP loop in interleaved blocks, with the
   channel (rank 0 leads a round every ~ROUND_INTERVAL_S, the other rank follows, exactly as a
   torchrun job does) and without it (both ranks call the bare step); also with a round before
   every step, the worst case. Prints median step times and their ratios.
2. Scaling efficiency (`--scaling`; on a machine with N GPUs it uses them, else CPU ranks):
   steps/s of one plain process vs N ranks with the same per-rank batch; efficiency =
   steps/s at N / steps/s at 1 (each rank's work is the same, so 1.0 is perfect scaling).

The ranks are started with torch.multiprocessing (gloo on the CPU, NCCL on CUDA), each building
the real TrainingEngine on the demo model and data.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    bench_config,
    machine,
    median,
    percentile,
    print_result,
    print_table,
    temp_run_dir,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_engine(rank: int, world: int, port: int, overrides: dict[str, Any]) -> Any:
    """This rank's engine, joined to the job (world > 1) or plain (world 1)."""
    import torch

    from vsr_async.runtime.launch import scan
    from vsr_async.training.distributed import RankContext
    from vsr_async.training.engine import TrainingEngine
    from vsr_async.training.rank_start import connect

    torch.set_num_threads(1)
    config = bench_config(temp_run_dir(f"dist{rank}"), **overrides)
    info = scan(config)
    if world == 1:
        return TrainingEngine(config, info)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    ranks = RankContext(rank=rank, world_size=world, local_rank=rank)
    connect(ranks, config)
    return TrainingEngine(config, info, ranks)


def block(engine: Any, steps: int, mode: str, interval: float) -> float:
    """`steps` steps in `mode`; seconds per step. Every rank ends the block at the same step."""
    from vsr_async.training import rank_channel, step
    from vsr_async.training.rank_channel import Continue

    device_sync(engine)
    start = time.perf_counter()
    end = engine.step + steps
    if mode == "bare":
        while engine.step < end:
            step.train_step(engine)
    else:
        rank_channel.ROUND_INTERVAL_S = interval  # 0: a round before every step
        timed_rounds(engine.channel)
        engine.config = dataclasses.replace(engine.config, MAX_STEPS=end)  # the last round's step
        engine._round_clock = None
        if engine.leads_ranks:
            while engine.step < end:
                engine.train_step()
        else:
            while engine.step < end:
                op = engine.channel.follow(None)
                assert isinstance(op, Continue), op
                while engine.step < op.run_until:
                    engine.train_step()
    device_sync(engine)
    return (time.perf_counter() - start) / steps


def timed_rounds(channel: Any) -> None:
    """Record each round's wall time in `channel.round_seconds` (rounds between steps)."""
    if hasattr(channel, "round_seconds"):
        return
    channel.round_seconds = []
    exchange = channel._exchange

    def timed(mine: object) -> list[object]:
        start = time.perf_counter()
        try:
            return exchange(mine)
        finally:
            channel.round_seconds.append(time.perf_counter() - start)

    channel._exchange = timed


def device_sync(engine: Any) -> None:
    import torch

    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    if engine.ranks is not None:
        engine.ranks.all_gather(None)  # every rank starts and ends a block together


def channel_rank(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    overrides = {"BATCH_SIZE": args.batch, "LOG_TBOARD_EVERY": 10**9, "DEVICE": args.device}
    engine = build_engine(rank, world, port, overrides)
    times: dict[str, list[float]] = {"bare": [], "channel": [], "channel_every_step": []}
    block(engine, args.steps, "bare", 0.0)  # warm-up
    in_training: list[float] = []  # rounds during the channel blocks at the real cadence
    for _ in range(args.repeats):
        times["bare"].append(block(engine, args.steps, "bare", 0.0))
        times["channel"].append(block(engine, args.steps, "channel", args.interval))
        in_training += engine.channel.round_seconds
        times["channel_every_step"].append(block(engine, args.steps, "channel", 0.0))
        engine.channel.round_seconds.clear()
    round_s = time_rounds(engine, 200)
    if rank == 0:
        out.put({"times": times, "round_s": round_s, "in_training": in_training})
    engine.ranks.close()


def time_rounds(engine: Any, count: int) -> list[float]:
    """Rounds back to back with no training between them: each one's wall time (rank 0)."""
    from vsr_async.training.rank_channel import Continue

    device_sync(engine)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        if engine.leads_ranks:
            engine.channel.lead(Continue(engine.step))
        else:
            engine.channel.follow(None)
        seconds.append(time.perf_counter() - start)
    return seconds


def scaling_rank(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    overrides = {"BATCH_SIZE": args.batch, "LOG_TBOARD_EVERY": 10**9, "DEVICE": args.device}
    engine = build_engine(rank, world, port, overrides)
    block(engine, max(args.steps // 4, 2), "bare", 0.0)  # warm-up
    seconds = [block(engine, args.steps, "bare", 0.0) for _ in range(args.repeats)]
    if rank == 0:
        out.put({"seconds_per_step": median(seconds)})
    if engine.ranks is not None:
        engine.ranks.close()


def spawn(target: Any, world: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    out = context.Queue()
    port = free_port()
    procs = [context.Process(target=target, args=(r, world, port, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=1800)
    for p in procs:
        p.join(timeout=120)
        if p.exitcode != 0:
            raise SystemExit(f"rank process exited with {p.exitcode}")
    return result


def channel_cost(args: argparse.Namespace) -> dict[str, Any]:
    result = spawn(channel_rank, 2, args)
    times = result["times"]
    bare = median(times["bare"])
    rows = [
        ["DDP loop, no channel", bare * 1e3, 1.0],
        [
            f"with the channel (a round every ~{args.interval:g} s)",
            median(times["channel"]) * 1e3,
            median(times["channel"]) / bare,
        ],
        [
            "with a round before every step (worst case)",
            median(times["channel_every_step"]) * 1e3,
            median(times["channel_every_step"]) / bare,
        ],
    ]
    print_table(
        f"command channel, 2 ranks on {args.device}, batch {args.batch} per rank, "
        f"{args.repeats} x {args.steps} steps per variant, interleaved",
        ["variant", "ms per step (median)", "ratio"],
        rows,
    )
    round_ms = median(result["round_s"]) * 1e3
    p99 = percentile(result["round_s"], 99) * 1e3
    at_cadence = round_ms / (args.interval * 1e3)
    print(
        f"  one round alone: {round_ms:.3f} ms median, {p99:.3f} ms p99 (200 back to back); "
        f"at one round per {args.interval:g} s of training that is {at_cadence:.3%} of the time, "
        f"and {round_ms / (bare * 1e3):.2%} of a step with a round before every step"
    )
    rounds = result["in_training"]
    in_training = median(rounds) * 1e3
    training_s = sum(times["channel"]) * args.steps
    share = sum(rounds) / training_s
    print(
        f"  at the real cadence: {len(rounds)} rounds in {training_s:.1f} s of training, "
        f"{in_training:.3f} ms median each (rank 0 also waits there for the other rank to "
        f"finish its step): {share:.3%} of the training time"
    )
    return {
        "round_in_training_ms": in_training,
        "channel_share": share,
        "round_ms": round_ms,
        "round_share_at_cadence": at_cadence,
        "channel_ratio": median(times["channel"]) / bare,
        "every_step_ratio": median(times["channel_every_step"]) / bare,
        "bare_ms_per_step": bare * 1e3,
    }


def scaling(args: argparse.Namespace, world: int) -> dict[str, Any]:
    one = spawn(scaling_rank, 1, args)["seconds_per_step"]
    many = spawn(scaling_rank, world, args)["seconds_per_step"]
    efficiency = one / many
    print_table(
        f"scaling on {args.device}: same batch {args.batch} per rank",
        ["ranks", "steps/s", "samples/s", "efficiency"],
        [
            [1, 1 / one, args.batch / one, 1.0],
            [world, 1 / many, world * args.batch / many, efficiency],
        ],
    )
    return {"scaling_world": world, "scaling_efficiency": efficiency}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per variant")
    parser.add_argument("--batch", type=int, default=4, help="BATCH_SIZE per rank")
    parser.add_argument("--interval", type=float, default=0.5, help="ROUND_INTERVAL_S")
    parser.add_argument("--scaling", action="store_true", help="also measure scaling")
    gpus = torch.cuda.device_count()
    parser.add_argument("--device", default="cuda" if gpus else "cpu")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "device": args.device}
    result |= channel_cost(args)
    if args.scaling or gpus > 1:
        result |= scaling(args, gpus if args.device == "cuda" else 2)
    print_result(result)


if __name__ == "__main__":
    main()
