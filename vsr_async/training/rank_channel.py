"""The command channel of a torchrun job: rank 0 tells the other ranks what to do, at step
boundaries they all agreed on before.

A *round* is one exchange on the CPU gloo group (`RankContext.all_gather`): rank 0 contributes an
`Op`, every other rank a note (a stop it was asked for by a signal, or None). Each round's
`Continue` names the step of the next round, so between rounds the ranks train without talking
(DDP's gradient all-reduce is their only contact) and no round adds a device→host sync. Rank 0
puts the next round at most `ROUND_INTERVAL_S` of training ahead, and never past the next
logging step, scheduled validation or MAX_STEPS, so a command waits at most that long and every
decision rank 0 takes at such a step (a validation, a stop) can be told there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vsr_async.settings import Config

if TYPE_CHECKING:  # torch is imported only where a job is distributed
    from vsr_async.training.distributed import RankContext

ROUND_INTERVAL_S = 0.5  # training time between rounds: a command waits at most this (+ a step)
HEARTBEAT_S = 1.0  # while paused, rank 0 still starts a round this often (well inside timeouts)


@dataclass(frozen=True)
class Continue:
    """Train until step `run_until`, then take part in the next round (== now: no training)."""

    run_until: int


@dataclass(frozen=True)
class Validate:
    """Validate this rank's share now (all ranks gather the result)."""


@dataclass(frozen=True)
class ApplyConfig:
    """A live config change, applied now (before the next step)."""

    config: Config


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Stop:
    reason: str


Op = Continue | Validate | ApplyConfig | Pause | Resume | Stop


def next_round(step: int, config: Config, step_seconds: float | None) -> int:
    """The step of the next round after `step`: about ROUND_INTERVAL_S of training ahead, but
    not past the next logging step, scheduled validation or MAX_STEPS."""
    ahead = 1 if not step_seconds else max(1, math.floor(ROUND_INTERVAL_S / step_seconds))
    limits = [
        step + ahead,
        next_multiple(step, config.LOG_TBOARD_EVERY),
        next_multiple(step, config.VAL_STEP_EVERY),
        max(config.MAX_STEPS, step),
    ]
    return min(limits)


def next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


class RankChannel:
    """One side of the channel: rank 0 `lead`s rounds, the others `follow` them."""

    def __init__(self, ranks: RankContext) -> None:
        self.ranks = ranks
        self.rounds = 0
        self.broken = False  # an exchange failed: no further round (a peer is gone)

    def lead(self, op: Op) -> list[str]:
        """Rank 0: start a round with `op`; the other ranks' notes (stop requests) come back."""
        assert self.ranks.leader
        replies = self._exchange(op)
        return [f"{note} (rank {rank})" for rank, note in enumerate(replies[1:], 1) if note]

    def follow(self, note: str | None) -> Op:
        """The other ranks: take part in the next round, with `note` for rank 0."""
        assert not self.ranks.leader
        replies = self._exchange(note)
        op = replies[0]
        if not isinstance(op, Op):
            raise TypeError(f"rank 0 sent {op!r}, not an Op")
        return op

    def _exchange(self, mine: object) -> list[object]:
        try:
            replies = self.ranks.all_gather(mine)
        except Exception:
            self.broken = True
            raise
        self.rounds += 1
        return replies
