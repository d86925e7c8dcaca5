"""Continue a run of the predecessor (VSR++) from one of its checkpoint files.

Runs on the GPU thread, inside `launch.make_engine`: the file is read (never written: from the
first save on, the run writes its own atomic checkpoints into its own folder), checked against
the config (MODEL "vsrpp", N_FEATS, N_BLOCKS), and its weights, step and — where they fit —
Adam's moments go into the engine. A file whose optimizer state does not fit continues with a
fresh optimizer and one warning line saying why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr_async.files.predecessor_checkpoint import (
    check_fits,
    load_predecessor_checkpoint,
    optimizer_state_by_name,
)

if TYPE_CHECKING:
    from vsr_async.training.engine import TrainingEngine

log = logging.getLogger(__name__)


def continue_predecessor(engine: TrainingEngine, path: Path, config: Any, run_id: str) -> None:
    """Load the predecessor checkpoint `path` into `engine` (see the module docstring)."""
    checkpoint = load_predecessor_checkpoint(path)
    check_fits(checkpoint, config)
    shapes = {name: p.shape for name, p in engine.model.named_parameters()}
    optimizer_state, why = optimizer_state_by_name(checkpoint.optimizer_state, shapes)
    if optimizer_state is None:
        log.warning(
            "%s: optimizer state not taken over (%s); continuing with a fresh optimizer",
            path,
            why,
        )
    engine.continue_from_weights(
        step=checkpoint.step,
        model_state=checkpoint.model_state,
        optimizer_state=optimizer_state,
        run_id=run_id,
    )
    quality = checkpoint.metrics.get("ki_quality")
    shown = ""
    if isinstance(quality, int | float) and not isinstance(quality, bool):
        shown = f", its last validation quality {quality * 100:.1f}%"
    log.info(
        "continuing from %s (step %d): a VSR++ checkpoint, its weights%s taken over%s; this "
        "run writes its own checkpoints, the file stays as it is",
        path,
        checkpoint.step,
        " and optimizer state" if optimizer_state is not None else "",
        shown,
    )
