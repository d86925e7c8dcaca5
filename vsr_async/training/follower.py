"""The loop of every rank but 0: do what rank 0 says, at the step it says it.

No store, files, panel or keyboard here: rank 0 owns those. Each round brings one `Op`; between
rounds this rank trains to the announced step. A stop this rank was asked for (a signal) goes
to rank 0 as the round's note, so every rank stops at the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vsr_async.errors import RankError, ValidationInterrupted
from vsr_async.training.engine import TrainingEngine
from vsr_async.training.rank_channel import (
    ApplyConfig,
    Continue,
    Pause,
    Resume,
    Stop,
    Validate,
)

log = logging.getLogger(__name__)


def follow(
    engine: TrainingEngine,
    note: Callable[[], str | None],
    stop_asked: Callable[[], bool] = lambda: False,
) -> str:
    """Follow rank 0's rounds until it says stop; returns the stop's reason. `note()` is asked
    before each round (a signal's stop request, once); `stop_asked()` during a validation (the
    ranks agree on it image by image)."""
    channel = engine.channel
    assert channel is not None and not channel.ranks.leader
    while True:
        op = channel.follow(note())
        match op:
            case Continue(run_until=until):
                while engine.step < until:
                    engine.train_step()
            case Validate():
                validate(engine, stop_asked)
            case ApplyConfig(config=config):
                changed = {
                    k: v for k, v in config.public_dict().items() if getattr(engine.config, k) != v
                }
                try:
                    engine.apply_config(config)
                except Exception:  # rank 0 logs its own failure and sends its config back
                    log.exception("config change at step %d failed", engine.step)
                    continue
                log.info("config changed at step %d: %s", engine.step, changed)
            case Pause():
                log.info("training paused at step %d", engine.step)
            case Resume():
                log.info("training resumed at step %d", engine.step)
            case Stop(reason=reason):
                log.info("stopping at step %d: %s", engine.step, reason)
                engine.stop_ranks(reason)  # the weights' fingerprints, compared by rank 0
                return reason


def validate(engine: TrainingEngine, stop_asked: Callable[[], bool]) -> None:
    """This rank's share of a validation. A failure or a stop ends it on every rank alike
    (`run_validation` agrees on both), and rank 0 logs and carries on the same way."""
    log.info("validation started at step %d", engine.step)
    try:
        result = engine.validate(should_stop=stop_asked)
    except RankError:
        raise
    except ValidationInterrupted as exc:
        log.warning("%s: the job is stopping", exc)
        return
    except Exception as exc:
        log.error("validation at step %d failed: %s", engine.step, exc)
        return
    engine.on_validation(engine.step, result.quality_ki)
    log.info("validation at step %d: quality %.6f", engine.step, result.quality_ki)
