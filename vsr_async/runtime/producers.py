"""CommandProducers: the supervisor's producer API — what the keyboard, the web panel and signals
call. Each method only enqueues a command (or refuses at once, e.g. while stopping); the
supervisor's loop executes it at the next step boundary and resolves its future.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from vsr_async.errors import CommandNotAvailable
from vsr_async.runtime import commands as cmd
from vsr_async.runtime.commands import Phase, Trigger, ValidationRequest
from vsr_async.runtime.requests import RequestRegistry
from vsr_async.runtime.store import StatsStore
from vsr_async.settings import Config


class CommandProducers:
    """Mixed into `Supervisor`, which sets these attributes."""

    config: Config
    store: StatsStore
    registry: RequestRegistry
    commands: asyncio.Queue[cmd.Command]
    _pending_names: list[str]  # queued command names, shown as "queued"
    _stop_requested: threading.Event  # set by the first stop; polled by the GPU thread

    @property
    def phase(self) -> Phase:
        raise NotImplementedError

    def _enqueue(self, command: cmd.Command) -> asyncio.Future[Any]:
        self.commands.put_nowait(command)
        self._pending_names.append(command.name)
        self.store.set_pending_commands(self._pending_names)
        return command.result

    def _refuse_while_stopping(self) -> None:
        """New work is refused from the first stop request on, not only once the loop stops."""
        if self.phase in (Phase.STOPPING, Phase.STOPPED) or self._stop_requested.is_set():
            raise CommandNotAvailable("the run is stopping")

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def request_validation(self, trigger: Trigger | str) -> ValidationRequest:
        """Ask for a validation; while one is queued and not started, the same request returns.

        Await `request.result` for the `ValidationReport` (resolved once its Statistik file is
        written).
        """
        self._refuse_while_stopping()
        request, new = self.registry.validation_request(Trigger(trigger), self._future())
        if new:
            self._enqueue(cmd.RunValidation(result=self._future(), request=request))
        return request

    def request(self, request_id: str) -> cmd.Request | None:
        """A validation or config request by id (GET /api/requests/{id})."""
        return self.registry.get(request_id)

    def pause(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.Pause(result=self._future()))

    def resume(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.Resume(result=self._future()))

    def toggle_pause(self) -> asyncio.Future[Any]:
        return self._enqueue(cmd.TogglePause(result=self._future()))

    def save_checkpoint(self, reason: str = "requested") -> asyncio.Future[Any]:
        return self._enqueue(cmd.SaveCheckpoint(result=self._future(), reason=reason))

    def stop(self, reason: str = "requested") -> asyncio.Future[Any]:
        """Stop at the next step boundary; a validation in progress ends at its next image."""
        self._stop_requested.set()
        return self._enqueue(cmd.Stop(result=self._future(), reason=reason))

    def apply_config(self, changes: dict[str, Any]) -> cmd.ConfigRequest:
        """Accept a live-config change (applied at the next step boundary) or refuse it now.

        It is checked against `pending_config`, so two changes that do not fit together are
        never both accepted: ConfigError if it is wrong on its own, LiveConfigConflict if it
        collides with a change accepted before it, StartOnlyKeyError, or CommandNotAvailable
        while stopping. Every producer comes here. `request.result` resolves with the applied
        values, or fails with the reason (also logged).
        """
        self._refuse_while_stopping()
        request = self.registry.accept_config(self.config, changes, self._future())
        self._enqueue(cmd.ApplyConfig(result=request.result, request=request))
        return request

    @property
    def pending_config(self) -> Config:
        """The config as it will be once every accepted, not yet applied change has applied.

        Derived from the request registry (one home for what is pending): the running config
        with the pending requests' changes on top, in the order they were accepted.
        """
        return self.registry.pending_config(self.config)
