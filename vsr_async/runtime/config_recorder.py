"""ConfigRecorder: records the configuration a run started with, once its start step is known.

The step is known only after the engine is built (a resumed run starts at its checkpoint's
step), so the record waits for `Supervisor.started`; a run that never starts records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from vsr_async.files.config_record import config_record, write_config_record
from vsr_async.runtime.hooks import RunHook

if TYPE_CHECKING:
    from vsr_async.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)

# The hparams plugin's metric columns: scalars the run writes at each validation.
HPARAM_METRICS = ("Quality/KI_Quality", "Metrics/KI_PSNR", "Metrics/KI_SSIM", "Validation/Loss")


class ConfigRecorder(RunHook):
    """Run hook: `config_step_<step>.json` in DATA_ROOT and TensorBoard text + hparams."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._record(), name="config-record")

    async def _record(self) -> None:
        supervisor = self.supervisor
        await supervisor.started.wait()
        step = supervisor.store.progress.step
        record = config_record(supervisor.config, step=step, run_id=supervisor.store.run_id)
        supervisor.tensorboard.log_config(record["config"], step, HPARAM_METRICS)
        try:
            path = await write_config_record(supervisor.run_dir, record)
        except OSError as exc:
            log.error("could not save the run's configuration: %s", exc)
            return
        log.info("configuration saved as %s", path.name)

    async def stop(self) -> None:
        """Waits for the record (a few hundred bytes); none if the run never started."""
        task, self._task = self._task, None
        if task is None:
            return
        if not self.supervisor.started.is_set():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
