"""RunHook and RunHooks: the one way to hook into a run.

A hook (the web panel, the keyboard, the dashboard, the live-config recorder, the checkpointer)
subclasses `RunHook` and overrides only the events it needs; the supervisor calls them through
`RunHooks`, which also owns the background tasks they start and that the shutdown awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any

from vsr_async.records import ValidationResult
from vsr_async.settings import Config

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # the shutdown's wait for background tasks (small writes: longer is a hang)


class RunHook:
    """Something that takes part in a run; every event is optional (the defaults do nothing).

    - `start()`: before the first step, in the order the hooks were added; a failure ends the run.
    - `stop()`: at the end of the shutdown, in reverse order; a failure is logged.
    - `on_config_change(config, applied, step)`: after a live change applied; runs as a
      background task (a slow write never holds up the step loop), awaited at shutdown.
    - `on_validation(step, result, improved)`: after a validation's results are published;
      awaited, in order, before training goes on.
    - `on_hard_exit()`: synchronous, before a second Ctrl+C ends the process at once (restore
      the terminal): no locks, no awaiting.
    """

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def on_config_change(self, config: Config, applied: dict[str, Any], step: int) -> None:
        return None

    async def on_validation(self, step: int, result: ValidationResult, improved: bool) -> None:
        return None

    def on_hard_exit(self) -> None:
        return None


class RunHooks:
    """The run's hooks, and the background tasks started for them (or by the supervisor)."""

    def __init__(self, hooks: Iterable[RunHook] = ()) -> None:
        self._hooks: list[RunHook] = list(hooks)
        self._tasks: set[asyncio.Future[Any]] = set()

    def add(self, hook: RunHook) -> None:
        self._hooks.append(hook)

    def __iter__(self) -> Iterator[RunHook]:
        return iter(list(self._hooks))

    async def start(self) -> None:
        for hook in list(self._hooks):
            await hook.start()

    async def stop(self) -> None:
        for hook in reversed(self._hooks):
            try:
                await hook.stop()
            except Exception:
                log.exception("stopping %s failed", type(hook).__name__)

    def config_changed(self, config: Config, applied: dict[str, Any], step: int) -> None:
        for hook in self._hooks:
            self.spawn(hook.on_config_change(config, applied, step))

    async def validated(self, step: int, result: ValidationResult, improved: bool) -> None:
        for hook in list(self._hooks):
            await hook.on_validation(step, result, improved)

    def hard_exit(self) -> None:
        for hook in self._hooks:
            with contextlib.suppress(Exception):
                hook.on_hard_exit()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` behind the step loop; `drain` awaits it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Await every background task, for DRAIN_TIMEOUT_S at most (the hooks' `stop` comes
        after this: a hook whose task is still running can wait for it there)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT_S)
        if pending:
            log.warning("%d background task(s) still running at shutdown", len(pending))
