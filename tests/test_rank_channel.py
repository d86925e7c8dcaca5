"""The command channel's schedule and the torchrun environment, without processes (the
torchrun jobs themselves are in test_torchrun_*.py)."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any, cast

import pytest

from vsr_async.errors import RankError, ValidationInterrupted, VsrError
from vsr_async.runtime.follower import StopNotes
from vsr_async.settings import build_config
from vsr_async.training import follower, rank_channel
from vsr_async.training.distributed import RankContext
from vsr_async.training.rank_channel import ROUND_INTERVAL_S, next_round


@pytest.fixture
def config():
    return build_config({"LOG_TBOARD_EVERY": 100, "VAL_STEP_EVERY": 500, "MAX_STEPS": 10_000})


def test_a_round_about_every_interval_of_training(config) -> None:
    assert next_round(10, config, None) == 11  # no pace measured yet: the next step
    assert next_round(10, config, 0.01) == 10 + round(ROUND_INTERVAL_S / 0.01)
    assert next_round(10, config, 5.0) == 11  # slow steps: one step ahead, never zero


def test_never_past_a_logging_step_a_validation_or_the_end(config) -> None:
    fast = 1e-6  # a pace that alone would put the next round far away
    assert next_round(10, config, fast) == 100  # the logging step: its stats may stop the run
    assert next_round(450, dataclasses.replace(config, LOG_TBOARD_EVERY=10**6), fast) == 500
    late = dataclasses.replace(config, LOG_TBOARD_EVERY=10**6, VAL_STEP_EVERY=10**6)
    assert next_round(9_990, late, fast) == 10_000
    assert next_round(10_000, late, fast) == 10_000  # at MAX_STEPS: no training


def test_rounds_land_on_every_validation_step(config) -> None:
    """A run that follows the rounds' announcements reaches each scheduled validation and
    logging step exactly at a round (where rank 0 may validate and stop)."""
    step, rounds = 0, set()
    while step < 2_000:
        step = next_round(step, config, 0.003)
        rounds.add(step)
    assert {100 * k for k in range(1, 21)} <= rounds
    assert {500, 1000, 1500, 2000} <= rounds


def test_environment_without_torchrun_or_with_one_rank_is_a_plain_process() -> None:
    assert RankContext.from_env({}) is None
    assert RankContext.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    ranks = RankContext.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert ranks is not None
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.leader) == (3, 4, 1, False)


@pytest.mark.parametrize(
    ("environ", "named"),
    [({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"), ({"WORLD_SIZE": "two"}, "two")],
)
def test_a_bad_environment_is_one_line(environ: dict[str, str], named: str) -> None:
    with pytest.raises(RankError, match=named):
        RankContext.from_env(environ)


def test_a_rank_on_cuda_takes_its_local_device() -> None:
    """One GPU per rank of a machine: an index in DEVICE would put every rank on one GPU."""
    import torch

    ranks = RankContext(rank=3, world_size=4, local_rank=1)
    assert ranks.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert ranks.device(torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert ranks.device(torch.device("cpu")) == torch.device("cpu")


def test_a_signal_is_handed_to_rank_0_once() -> None:
    notes = StopNotes(rank=1)
    assert notes() is None
    notes.on_signal(signal.SIGTERM, None)
    assert notes() == "signal SIGTERM"
    assert notes() is None  # once: rank 0 stops every rank on the first


def test_the_config_sent_to_the_ranks_holds_no_secret() -> None:
    config = build_config({"WEB_TOKEN": "s3cret-token-value", "MAX_LR": 2e-4})
    sent = config.without_secrets()
    assert sent.WEB_TOKEN == "" and sent.MAX_LR == 2e-4
    assert sent.public_dict() == config.public_dict()


def test_ops_are_plain_data() -> None:
    """What crosses the channel pickles (all_gather_object) and compares by value."""
    import pickle

    config = build_config({})
    ops = [
        rank_channel.Continue(7),
        rank_channel.Validate(),
        rank_channel.ApplyConfig(config),
        rank_channel.Pause(),
        rank_channel.Resume(),
        rank_channel.Stop("signal SIGTERM"),
    ]
    assert [pickle.loads(pickle.dumps(op)) for op in ops] == ops


class FailingEngine:
    """What `follower.validate` calls, with the validation raising `error`."""

    def __init__(self, error: Exception) -> None:
        self.error, self.step, self.qualities = error, 40, []

    def validate(self, should_stop: Any = None) -> Any:
        raise self.error

    def on_validation(self, step: int, quality: float) -> None:
        self.qualities.append(quality)


@pytest.mark.parametrize(
    "error",
    [VsrError("validation failed on rank 0: dataset x.png: truncated"), RuntimeError("bug")],
)
def test_a_failed_validation_leaves_a_follower_in_the_job(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Every rank raises after the one gather (run_validation); rank 0 logs it and trains on,
    so a follower must too, or the job would end at the next round."""
    engine = FailingEngine(error)
    follower.validate(cast(Any, engine), lambda: False)
    assert engine.qualities == []  # no quality for the adaptive system
    assert f"validation at step 40 failed: {error}" in caplog.text


def test_a_stop_during_validation_or_a_lost_rank_is_not_a_failure() -> None:
    interrupted = FailingEngine(ValidationInterrupted(2, 5))
    follower.validate(cast(Any, interrupted), lambda: True)  # the next round says stop
    with pytest.raises(RankError):
        follower.validate(cast(Any, FailingEngine(RankError("rank 1: gone"))), lambda: False)
