"""A process of a torchrun job other than rank 0: no event loop, panel, keyboard or files.

Its one thread is its GPU thread: it joins the job, takes rank 0's config, dataset and state
(`training.rank_start`), then follows rank 0's rounds (`training.follower`). A SIGTERM or SIGINT
here is sent to rank 0 with the next round, so every rank stops at the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from vsr_async.files.logs import ConsoleFormatter
from vsr_async.settings import Config
from vsr_async.training.distributed import RankContext

log = logging.getLogger(__name__)


class StopNotes:
    """Signals received, handed to rank 0 once; a second signal ends the process at once."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.reason: str | None = None
        self.sent = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            os.write(2, f"[rank {self.rank}] {name} again: exiting now\n".encode())
            os._exit(128 + signum)
        self.reason = f"signal {name}"
        log.warning("%s received: asking rank 0 to stop every rank", name)

    def __call__(self) -> str | None:
        if self.reason is None or self.sent:
            return None
        self.sent = True
        return self.reason


class RankFormatter(ConsoleFormatter):
    """Rank 0's console format, prefixed: `[rank 1] 12:00:01 message`."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + super().format(record)


def log_to_stderr(rank: int) -> None:
    """This rank's lines on stderr, prefixed with the rank: every line where torchrun collects
    them (a pipe or a file: `--tee`, `--log-dir`), warnings only on a terminal, where rank 0's
    dashboard is drawn."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RankFormatter(rank))
    handler.setLevel(logging.WARNING if sys.stderr.isatty() else logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def run_follower(config: Config, ranks: RankContext) -> int:
    """Train as rank `ranks.rank` until rank 0 says stop; the process's exit code."""
    from vsr_async.training.follower import follow
    from vsr_async.training.rank_start import start_follower

    log_to_stderr(ranks.rank)
    engine = start_follower(ranks, config)  # a signal meanwhile ends the process at once
    notes = StopNotes(ranks.rank)
    notes.install()
    try:
        follow(engine, notes, lambda: notes.reason is not None)
    finally:
        engine.close()  # loader workers stop; the job is left after a clean stop only
    log.info("stopped at step %d", engine.step)
    return 0
