"""Helpers shared by the tests: a tiny dataset writer, CLI runner, waiting on store changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data

from vsr_async.data.degrade import bicubic_downscale
from vsr_async.data.images import write_png
from vsr_async.runtime.launch import build_run, scan_async

REPO = Path(__file__).resolve().parents[1]

TINY_SETTINGS: dict[str, Any] = {
    "DATASET_LAYOUT": "patches",
    "N_FEATS": 8,
    "N_BLOCKS": 2,
    "NUM_FRAMES": 3,
    "SCALE": 3,
    "BATCH_SIZE": 2,
    "NUM_WORKERS": 0,
    "LOG_TBOARD_EVERY": 5,
    "VAL_STEP_EVERY": 1_000_000,
    "SAVE_STEP_EVERY": 1_000_000,
    "MAX_STEPS": 1_000_000,
    "WARMUP_STEPS": 5,
    "MAX_LR": 1e-3,
    "WEB_ENABLED": False,
    "KEYBOARD_ENABLED": False,
}


def _clip(photo: np.ndarray, x: int, y: int, gt_size: int, frames: int, scale: int):
    """A pan over `photo`: frame t is the crop shifted by t−centre pixels; GT = centre crop."""
    centre = frames // 2
    lr_frames = []
    for t in range(frames):
        dx = t - centre
        crop = photo[y : y + gt_size, x + dx : x + dx + gt_size]
        lr_frames.append(bicubic_downscale(crop, scale))
    gt = photo[y : y + gt_size, x : x + gt_size]
    return gt, np.concatenate(lr_frames, axis=0)


def write_patch_dataset(
    root: Path, *, train: int = 24, val: int = 2, gt_size: int = 24, val_size: int = 48
) -> Path:
    """A small patch-layout dataset (NUM_FRAMES 3, SCALE 3) cut from scikit-image photographs."""
    frames, scale = TINY_SETTINGS["NUM_FRAMES"], TINY_SETTINGS["SCALE"]
    rng = np.random.default_rng(0)
    train_photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    val_photo = skimage.data.immunohistochemistry()
    for split, count, size, photos in (
        ("Patches", train, gt_size, train_photos),
        ("Val", val, val_size, [val_photo]),
    ):
        (root / split / "GT").mkdir(parents=True, exist_ok=True)
        (root / split / "LR").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            photo = photos[i % len(photos)]
            y = int(rng.integers(0, photo.shape[0] - size))
            x = int(rng.integers(frames, photo.shape[1] - size - frames))
            gt, lr = _clip(photo, x, y, size, frames, scale)
            write_png(root / split / "GT" / f"{i:04d}.png", gt)
            write_png(root / split / "LR" / f"{i:04d}.png", lr)
    return root


async def wait_until(predicate: Callable[[], bool], store: Any, timeout: float = 60.0) -> None:
    """Wait (on store changes, not sleeps) until `predicate()` holds."""

    async def loop() -> None:
        version = -1
        while not predicate():
            version = await store.wait_for_change(version, timeout=1.0)

    await asyncio.wait_for(loop(), timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, **kwargs: Any):
    """`python -m vsr_async ARGS` in a subprocess (stdin from /dev/null), captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vsr_async", *args],
        cwd=cwd or REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value!r}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CONTINUING = re.compile(r"continuing from (\S+) \(step (\d+)\)")
LOG_STEP = re.compile(r"step (\d+)/\d+ ")


class CliRun:
    """`python -m vsr_async train --config FILE ...` as a child process; its console log
    (stdout and stderr together) is read line by line, so a test awaits what it waits for."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, config_file: Path, *args: str) -> CliRun:
        return await cls.exec(
            "-m",
            "vsr_async",
            "train",
            "--config",
            str(config_file),
            "--no-web",
            "--no-keyboard",
            *args,
        )

    @classmethod
    async def torchrun(
        cls, config_file: Path, *launcher: str, args: tuple[str, ...] = ("--no-web",)
    ) -> CliRun:
        """`torchrun LAUNCHER... -m vsr_async train --config FILE --no-keyboard ARGS...`: every
        rank's console lines arrive here (rank 0's plain, the others' prefixed `[rank N] `)."""
        return await cls.exec(
            "-m",
            "torch.distributed.run",
            *launcher,
            "-m",
            "vsr_async",
            "train",
            "--config",
            str(config_file),
            "--no-keyboard",
            *args,
        )

    @classmethod
    async def exec(cls, *argv: str) -> CliRun:
        """`python ARGV...` with stdin closed, stdout and stderr read together."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(proc)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def _next_line(self) -> str:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode("utf-8", "replace")
        if line:
            self.lines.append(line)
        return line

    async def wait_for(self, *patterns: re.Pattern[str], timeout: float = 120) -> re.Match[str]:
        """The first new line matching any pattern (an error if the process ends first)."""

        async def scan() -> re.Match[str]:
            while True:
                line = await self._next_line()
                if not line:
                    await self.proc.wait()
                    raise AssertionError(
                        f"process exited ({self.proc.returncode}) before {patterns}:\n"
                        + self.output[-3000:]
                    )
                for pattern in patterns:
                    if match := pattern.search(line):
                        return match

        return await asyncio.wait_for(scan(), timeout)

    async def finish(self, timeout: float = 120) -> int:
        """Read to the end and return the exit code."""

        async def drain() -> int:
            while await self._next_line():
                pass
            return await self.proc.wait()

        return await asyncio.wait_for(drain(), timeout)

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    async def close(self) -> None:
        """Kill if still running, then reap (never leaves a process or an open pipe behind)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.finish(60)


def cli_config(path: Path, dataset: Path, data_root: Path, **overrides: Any) -> Path:
    values = {
        **TINY_SETTINGS,
        "DATASET_ROOT": str(dataset),
        "DATA_ROOT": str(data_root),
        **overrides,
    }
    return write_toml(path, values)


async def finish_run(make_config, resume: str = "auto", **overrides: Any):
    """An in-process run to MAX_STEPS; returns the Run (its log is in run_dir/training.log)."""
    config = make_config(**overrides)
    run = build_run(config, await scan_async(config), resume=resume, console_log=False)
    assert await asyncio.wait_for(run.execute(), 180) == 0
    return run
