"""The torchrun job as this process sees it: rank, world size, device, and the few collectives
the run uses besides DistributedDataParallel's own.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); with a world size
above 1 the run is distributed. Two process groups: the default one for tensors on the training
device (NCCL on CUDA, gloo on the CPU) and a CPU gloo group for Python objects (commands, the
run's config, validation records), so that those never pass through the GPU and never add a
device→host sync. Every collective runs on the one GPU thread of its process, in the same order
on every rank.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vsr_async.errors import RankError

log = logging.getLogger(__name__)


@dataclass
class RankContext:
    """This process's place in a torchrun job; `connect()` joins the process groups."""

    rank: int
    world_size: int
    local_rank: int
    timeout_s: float = 300.0
    objects: Any = field(default=None, repr=False)  # the CPU gloo group, once connected

    @property
    def leader(self) -> bool:
        """Rank 0: the one with the web panel, keyboard, store and files."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RankContext | None:
        """The job torchrun started this process in; None without torchrun or with one rank
        (a world of one trains exactly as a plain process does)."""
        try:
            world = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local = int(environ.get("LOCAL_RANK", "0"))
        except ValueError as exc:
            raise RankError(f"torchrun's environment is not readable: {exc}") from None
        if world <= 1:
            return None
        if not 0 <= rank < world:
            raise RankError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank=rank, world_size=world, local_rank=local)

    def device(self, configured: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK whenever the config asks for CUDA (one GPU per
        rank of a machine; a DEVICE index would put every rank on that one GPU)."""
        if configured.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return configured

    def connect(self, device: torch.device, timeout_s: float) -> None:
        """Join the job's process groups (NCCL on CUDA, gloo on the CPU, plus the CPU group for
        objects). A rank that cannot reach the others fails with one line, not a hang."""
        if self.objects is not None:
            return
        self.timeout_s = timeout_s
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if device.type == "cuda" else "gloo"
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # this thread's device: NCCL's communicators
            if not dist.is_initialized():
                dist.init_process_group(backend, timeout=timeout, **self._attempt_store(timeout))
            self.objects = dist.new_group(backend="gloo", timeout=timeout)
        except (RuntimeError, ValueError, OSError) as exc:
            raise RankError(
                f"rank {self.rank} of {self.world_size} cannot reach the other ranks at {where} "
                f"within DIST_TIMEOUT_S={timeout_s:g} s: {first_line(exc)}"
            ) from None
        log.info(
            "rank %d of %d joined (%s, device %s, timeout %g s)",
            self.rank,
            self.world_size,
            backend,
            device,
            timeout_s,
        )

    def _attempt_store(self, timeout: datetime.timedelta) -> dict[str, Any]:
        """init_process_group's store under torchrun: its agent's store, with a prefix per attempt.

        torchrun keeps ONE store for all attempts of a job (torch >= 2.5 shares its rendezvous
        store with the workers), and the keys of an attempt that died stay in it: after a
        `--max-restarts` restart, a rank would read the dead ranks' addresses and fail to connect.
        TORCHELASTIC_RESTART_COUNT keeps each attempt's keys apart. Empty (env:// as usual) when
        torchrun does not share its store."""
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            return {}
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timeout,
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return {
            "store": dist.PrefixStore(f"vsr_async/attempt_{attempt}", store),
            "rank": self.rank,
            "world_size": self.world_size,
        }

    # --- collectives (GPU thread; every rank calls them in the same order) --------------------

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, indexed by rank (the CPU group: pickled, no device involved)."""
        out: list[Any] = [None] * self.world_size
        self._guard("an exchange", dist.all_gather_object, out, value, group=self.objects)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        box = [value if self.leader else None]
        self._guard("a broadcast", dist.broadcast_object_list, box, src=0, group=self.objects)
        return box[0]

    def mean_(self, tensor: Tensor) -> Tensor:
        """Average `tensor` over the ranks in place (the default group, on the device)."""
        self._guard("an all-reduce", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor.div_(self.world_size)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over the ranks in place (the default group, on the device)."""
        self._guard("an all-reduce", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (RuntimeError, OSError) as exc:  # a rank left, or DIST_TIMEOUT_S passed
            raise self.failure(what, exc) from None

    def failure(self, what: str, exc: BaseException) -> RankError:
        """The one line for an exchange that failed: which rank, what, and torch's reason."""
        return RankError(
            f"rank {self.rank}: {what} with the other ranks failed (a rank stopped or did not "
            f"answer within DIST_TIMEOUT_S={self.timeout_s:g} s): {first_line(exc)}"
        )

    def close(self) -> None:
        """Leave the job (after the last collective)."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self.objects = None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def is_exchange_failure(exc: BaseException) -> bool:
    """Whether a RuntimeError from a step is a failed collective (a peer gone, a timeout), not a
    bug: torch's DistError family, or gloo's/NCCL's plain RuntimeErrors, which name themselves."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection reset", "connection closed"))
