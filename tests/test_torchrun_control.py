"""Control and faults of real torchrun jobs on the CPU (gloo, tiny model).

- `POST /validate`, `/pause`, `/resume` and `PATCH /api/config` on rank 0's panel reach both ranks
  at the same step;
- SIGTERM to torchrun, or to rank 1 alone, stops every rank at one step with one checkpoint;
- two "machines" (two torchrun agents with a c10d rendezvous on 127.0.0.1) train and validate;
- SIGKILL of a rank under `--max-restarts 1`: the job restarts from the newest checkpoint;
- a rank that cannot reach the others fails with one line.

Every test reads the job's console: rank 0's lines as `HH:MM:SS message`, the others' as
`[rank N] HH:MM:SS message` (tests/helpers.py CliRun.torchrun).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from helpers import CONTINUING, LOG_STEP, REPO, CliRun, cli_config, free_port

from vsr_async.files.checkpoints import CHECKPOINT_DIR, checkpoint_name, load_checkpoint

TWO_RANKS = ("--standalone", "--nproc_per_node", "2")
TIME = r"\d\d:\d\d:\d\d "
SAVED = re.compile(r"checkpoint saved: checkpoint_(\d+)\.pt")


def rank0(text: str) -> re.Pattern[str]:
    """A line of rank 0 (its console lines start with the time; torchrun's own do not)."""
    return re.compile(rf"^{TIME}(?:WARNING )?{text}", re.M)


def rank1(text: str) -> re.Pattern[str]:
    return re.compile(rf"^\[rank 1\] {TIME}(?:WARNING )?{text}", re.M)


def job_config(tmp_path: Path, dataset: Path, **overrides: Any) -> Path:
    return cli_config(tmp_path / "job.toml", dataset, tmp_path / "Learn", **overrides)


async def wait_all(
    run: CliRun, *patterns: re.Pattern[str], timeout: float = 60
) -> list[re.Match[str]]:
    """The first new line of each pattern, whatever the order the ranks' lines arrive in."""
    found: dict[re.Pattern[str], re.Match[str]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(patterns):
        left = [p for p in patterns if p not in found]
        match = await run.wait_for(*left, timeout=max(0.1, deadline - time.monotonic()))
        found[match.re] = match
    return [found[p] for p in patterns]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: no psutil here)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def rank_pid(torchrun: CliRun, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (its environment says which it is)."""
    for pid in children(torchrun.proc.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under torchrun {torchrun.proc.pid}")


def no_failure_report(output: str) -> None:
    """Every rank exited 0: torchrun reports a worker's non-zero exit as a ChildFailedError
    with `exitcode`, a rank's crash shows a Python traceback. The one traceback allowed is
    torchrun's own after a SIGTERM to it (its agent re-raises the signal as SignalException)."""
    assert "ChildFailedError" not in output, output[-3000:]
    assert "exitcode" not in output, output[-3000:]
    own = output.count("elastic.multiprocessing.api.SignalException: Process")
    assert output.count("Traceback (most recent call last)") == own, output[-3000:]


def assert_stopped_together(output: str, run_dir: Path) -> int:
    """Both ranks stopped at one step N, with one final checkpoint of step N; returns N."""
    lines = output.splitlines()

    def steps(pattern: re.Pattern[str]) -> list[int]:
        return [int(m.group(1)) for line in lines if (m := pattern.search(line))]

    stopping = steps(rank1(r"stopping at step (\d+): "))
    stopped = steps(rank1(r"stopped at step (\d+)$"))
    same = steps(rank0(r"every rank holds the same weights at step (\d+) "))
    assert len(stopping) == 1 and stopping == stopped == same, output[-3000:]
    step = same[0]
    assert sum(f"checkpoint saved: {checkpoint_name(step)}" in line for line in lines) == 1
    final = run_dir / CHECKPOINT_DIR / checkpoint_name(step)
    assert load_checkpoint(final)["step"] == step
    newest = max(int(p.stem.split("_")[1]) for p in final.parent.glob("checkpoint_*.pt"))
    assert newest == step
    return step


# --- web commands ----------------------------------------------------------------------------


async def post(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(url) as resp:
        assert resp.status == 202, await resp.text()


async def snapshot_step(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(base + "/api/snapshot") as resp:
        assert resp.status == 200
        return int((await resp.json())["step_current"])


async def test_web_validate_pause_resume_reach_both_ranks_at_one_step(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    config = job_config(tmp_path, tiny_dataset, WEB_ENABLED=True, WEB_HOST="127.0.0.1", WEB_PORT=0)
    run_dir = tmp_path / "Learn"
    run = await CliRun.torchrun(config, *TWO_RANKS, args=())
    try:
        base = (await run.wait_for(rank0(r"web panel: (http://127\.0\.0\.1:\d+)/"))).group(1)
        await run.wait_for(rank0(r"step \d+/"))  # training
        async with aiohttp.ClientSession() as http:
            await post(http, base + "/validate")
            v0, v1 = await wait_all(
                run,
                rank0(r"validation started at step (\d+) \(web\)"),
                rank1(r"validation started at step (\d+)$"),
            )
            step = int(v0.group(1))
            assert int(v1.group(1)) == step
            await run.wait_for(rank0(rf"statistics: wrote Statistik_{step}\.json"))
            statistik = json.loads((run_dir / f"Statistik_{step}.json").read_text("utf-8"))
            assert statistik["validation_step"] == step

            asked = time.monotonic()
            await post(http, base + "/pause")
            p0, p1 = await wait_all(
                run,
                rank0(r"training paused at step (\d+)$"),
                rank1(r"training paused at step (\d+)$"),
            )
            latency = time.monotonic() - asked
            paused = int(p0.group(1))
            assert int(p1.group(1)) == paused
            assert latency < 2.0
            mark = len(run.lines)
            before = await snapshot_step(http, base)
            await asyncio.sleep(1.5)
            after = await snapshot_step(http, base)
            await post(http, base + "/resume")
            r0, r1 = await wait_all(
                run,
                rank0(r"training resumed at step (\d+)$"),
                rank1(r"training resumed at step (\d+)$"),
            )
            # Nothing trained while paused, on either rank: rank 1 resumes at the paused step.
            assert before == after == paused == int(r0.group(1)) == int(r1.group(1))
            during = run.lines[mark:]
            assert not [line for line in during if LOG_STEP.search(line) or "Statistik" in line]
            resumed_at = int((await run.wait_for(LOG_STEP)).group(1))
            assert resumed_at > paused

            # A live config change applies on every rank after the same step.
            async with http.patch(base + "/api/config", json={"MAX_LR": 5e-4}) as response:
                assert response.status in (200, 202), await response.text()
            c0, c1 = await wait_all(
                run,
                rank0(r"config changed at step (\d+): \{'MAX_LR': 0\.0005\}"),
                rank1(r"config changed at step (\d+): \{'MAX_LR': 0\.0005\}"),
            )
            assert int(c0.group(1)) == int(c1.group(1)) >= resumed_at
        print(f"pause: both ranks logged it {latency:.3f} s after POST /pause (step {paused})")
        run.send(signal.SIGTERM)
        code = await run.finish()
    finally:
        await run.close()
    print(f"torchrun exit code after SIGTERM: {code}")
    no_failure_report(run.output)
    assert_stopped_together(run.output, run_dir)


# --- SIGTERM ---------------------------------------------------------------------------------


async def signal_after_step(run: CliRun, step: int, send: Callable[[], None]) -> int:
    """Once the job has logged step `step` or later, `send()` a signal; the exit code."""
    try:
        while int((await run.wait_for(LOG_STEP)).group(1)) < step:
            pass
        send()
        return await run.finish()
    finally:
        await run.close()


async def test_sigterm_to_torchrun_stops_both_ranks_at_one_step(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    run_dir = tmp_path / "Learn"
    run = await CliRun.torchrun(job_config(tmp_path, tiny_dataset), *TWO_RANKS)
    code = await signal_after_step(run, 20, lambda: run.send(signal.SIGTERM))
    # torchrun's agent re-raises the signal after its workers stopped: its own code, not ours.
    print(f"torchrun exit code after SIGTERM: {code}")
    no_failure_report(run.output)
    step = assert_stopped_together(run.output, run_dir)
    assert step >= 20


async def test_sigterm_to_rank_1_stops_the_whole_job(tmp_path: Path, tiny_dataset: Path) -> None:
    run_dir = tmp_path / "Learn"
    run = await CliRun.torchrun(job_config(tmp_path, tiny_dataset), *TWO_RANKS)
    code = await signal_after_step(run, 20, lambda: os.kill(rank_pid(run, 1), signal.SIGTERM))
    assert code == 0, run.output[-3000:]
    no_failure_report(run.output)
    assert rank0(r"signal SIGTERM \(rank 1\): stopping every rank").search(run.output)
    assert assert_stopped_together(run.output, run_dir) >= 20


# --- two machines ------------------------------------------------------------------------------


async def test_two_nodes_with_a_c10d_rendezvous_train_validate_and_stop(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    run_dir = tmp_path / "Learn"
    config = job_config(tmp_path, tiny_dataset, MAX_STEPS=30, VAL_STEP_EVERY=10)
    launcher = (
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        f"faulttests-{os.getpid()}",
    )
    nodes = [await CliRun.torchrun(config, *launcher) for _ in range(2)]
    try:
        codes = await asyncio.gather(*(node.finish(180) for node in nodes))
    finally:
        for node in nodes:
            await node.close()
    assert codes == [0, 0], [node.output[-2000:] for node in nodes]
    # The rendezvous decides which node is rank 0: the one with the run's own lines.
    leaders = [node for node in nodes if rank0("run directory ").search(node.output)]
    assert len(leaders) == 1, [node.output[-2000:] for node in nodes]
    leader = leaders[0].output
    other = next(node for node in nodes if node is not leaders[0]).output
    assert not rank0("").search(other)  # rank 1 writes nothing of its own (no files, no log)
    for output in (leader, other):
        no_failure_report(output)
    validated = [
        int(m.group(1))
        for line in leader.splitlines()
        if (m := rank0(r"validation started at step (\d+) ").search(line))
    ]
    followed = [
        int(m.group(1))
        for line in other.splitlines()
        if (m := rank1(r"validation started at step (\d+)$").search(line))
    ]
    assert validated == followed == [10, 20, 30]
    written = sorted(int(p.stem.split("_")[1]) for p in run_dir.glob("Statistik_*.json"))
    assert written == [10, 20, 30]
    same = rank0(r"every rank holds the same weights at step 30 \(sha256 (\w+)\)").search(leader)
    assert same is not None, leader[-2000:]
    assert f"weights at step 30: sha256 {same.group(1)}" in other


# --- a rank dies -------------------------------------------------------------------------------


async def test_sigkill_of_a_rank_restarts_from_the_newest_checkpoint(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    run_dir = tmp_path / "Learn"
    settings: dict[str, Any] = {
        "MAX_STEPS": 160,
        "SAVE_STEP_EVERY": 20,
        "VAL_STEP_EVERY": 80,
        "LOG_TBOARD_EVERY": 2,
        "DIST_TIMEOUT_S": 20,
    }
    run = await CliRun.torchrun(
        job_config(tmp_path, tiny_dataset, **settings), *TWO_RANKS, "--max-restarts", "1"
    )
    try:
        await run.wait_for(rank0(r"checkpoint saved: checkpoint_40\.pt"))
        victim = rank_pid(run, 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # torchrun's agent reports the first failure it saw (rank 1's -9, or rank 0's exit 1).
        await run.wait_for(re.compile(r"failed \(exitcode: -?\d+\) local_rank: "))
        detected = time.monotonic() - killed
        await run.wait_for(rank0(r"rank 0 of 2 joined"))
        restarted = time.monotonic() - killed
        first_attempt = run.output
        resumed = await run.wait_for(CONTINUING)
        code = await run.finish(180)
    finally:
        await run.close()
    print(
        f"SIGKILL of rank 1: torchrun saw it after {detected:.2f} s, "
        f"the restarted job joined after {restarted:.2f} s"
    )
    assert code == 0, run.output[-3000:]
    assert restarted < 60
    newest = max(int(step) for step in SAVED.findall(first_attempt))
    assert newest >= 40
    assert resumed.group(1).endswith(checkpoint_name(newest))
    assert int(resumed.group(2)) == newest
    for path in run_dir.rglob("*.pt"):  # every file left is complete
        assert "model" in load_checkpoint(path), path
    statistik = sorted(run_dir.glob("Statistik_*.json"))
    assert [p.name for p in statistik] == ["Statistik_160.json", "Statistik_80.json"]
    for path in statistik:
        json.loads(path.read_text("utf-8"))

    # Nothing lost: the same weights as a job that was never interrupted.
    reference_config = cli_config(
        tmp_path / "reference.toml", tiny_dataset, tmp_path / "Reference", **settings
    )
    reference = await CliRun.torchrun(reference_config, *TWO_RANKS)
    try:
        assert await reference.finish(180) == 0
    finally:
        await reference.close()
    fingerprint = rank0(r"every rank holds the same weights at step 160 \(sha256 (\w+)\)")
    expected = fingerprint.search(reference.output)
    assert expected is not None, reference.output[-3000:]
    final = fingerprint.search(run.output)
    assert final is not None and final.group(1) == expected.group(1)


# --- a rank that cannot reach the others -----------------------------------------------------


def test_a_rank_that_cannot_reach_the_others_fails_with_one_line(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    port = free_port()  # closed again: nobody listens there
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    config = job_config(tmp_path, tiny_dataset)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vsr_async",
            "train",
            "--config",
            str(config),
            "--no-web",
            "--no-keyboard",
            "--set",
            "DIST_TIMEOUT_S=5",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.monotonic() - started
    print(f"unreachable rank: exit {done.returncode} after {elapsed:.1f} s")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("vsr_async: error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(
        f"vsr_async: error: rank 1 of 2 cannot reach the other ranks at 127.0.0.1:{port} "
    )
    assert "DIST_TIMEOUT_S=5" in errors[0]
    assert "Traceback" not in done.stderr
    assert elapsed < 30
    assert not (tmp_path / "Learn").exists()  # a rank other than 0 writes nothing
