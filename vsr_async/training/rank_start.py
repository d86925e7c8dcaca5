"""How the ranks of a torchrun job start alike: rank 0 sends its config and dataset scan, every
rank builds the engine (DDP's constructor compares and broadcasts the weights), then rank 0 sends
the state it resumed from, if any. So the other ranks never read the run folder (on another
machine they could not), and they start from exactly what rank 0 starts from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vsr_async.settings import Config
from vsr_async.training.distributed import RankContext
from vsr_async.training.precision import resolve_device

if TYPE_CHECKING:
    from vsr_async.training.engine import TrainingEngine


def connect(ranks: RankContext, config: Config) -> None:
    ranks.connect(ranks.device(resolve_device(config.DEVICE)), config.DIST_TIMEOUT_S)


def start_leader(
    ranks: RankContext,
    config: Config,
    dataset_info: Any,
    build: Callable[[], TrainingEngine],
) -> TrainingEngine:
    """Rank 0, on its GPU thread: `build()` makes the engine (and loads a checkpoint)."""
    connect(ranks, config)
    ranks.broadcast((config.without_secrets(), dataset_info))
    engine = build()
    state = None
    if engine.resumed is not None:
        state = {**engine.capture_state(), "run_id": engine.resumed.run_id}
        # The CUDA generators are not used, and another machine may have fewer GPUs.
        state["rng"] = {k: v for k, v in state["rng"].items() if k != "cuda"}
    ranks.broadcast(state)
    return engine


def start_follower(ranks: RankContext, own_config: Config) -> TrainingEngine:
    """Any other rank: rank 0's config and dataset, the same engine, rank 0's state."""
    from vsr_async.training.engine import TrainingEngine

    connect(ranks, own_config)
    config, dataset_info = ranks.broadcast(None)
    engine = TrainingEngine(config, dataset_info, ranks)
    state = ranks.broadcast(None)
    if state is not None:
        engine.load_state(state)
        engine.adaptive.share_only()
    return engine
