"""Server-sent events: one hub per app fans store changes, command results and log lines out to
every open `/api/events` stream (several tabs at once).

Snapshots are sent at most `max_rate_hz` times a second, however often the store changes; each
carries the whole snapshot (the panel needs no merging). New chart points go out as `history`
deltas. A client that falls too far behind is dropped; its EventSource reconnects and starts
afresh with a full snapshot and history. The hub only reads the store, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from vsr_async.runtime.commands import ValidationRequest
from vsr_async.runtime.json_values import finite_or_none
from vsr_async.runtime.store import StatsStore

MAX_QUEUED_EVENTS = 500  # per client; beyond this the client is dropped (it reconnects)
RECENT_LOG_LINES = 100  # replayed to a new tab
RECONNECT_MS = 2000  # the `retry:` hint for EventSource


@dataclass(frozen=True)
class Event:
    name: str
    data: str  # JSON text


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    dropped: bool = False


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)


class EventHub:
    """Broadcasts to the open event streams; `run()` is the throttled snapshot publisher."""

    def __init__(self, store: StatsStore, *, max_rate_hz: float = 4.0) -> None:
        self.store = store
        self.min_interval_s = 1.0 / max_rate_hz
        self._subscribers: set[Subscriber] = set()
        self._recent_logs: deque[Event] = deque(maxlen=RECENT_LOG_LINES)
        self._last_loss_step = self._newest_loss_step()
        self._last_validation_count = store.validation.count
        self._watched: set[str] = set()  # validation request ids with a done callback
        self._closed = False

    @property
    def client_count(self) -> int:
        return len(self._subscribers)

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, name: str, data: Any) -> None:
        self._broadcast(Event(name, dumps(finite_or_none(data))))

    def publish_log(self, line: dict[str, Any]) -> None:
        event = Event("log", dumps(line))
        self._recent_logs.append(event)
        self._broadcast(event)

    def publish_snapshot(self) -> None:
        """The current snapshot and any new chart points, now (the publisher task throttles)."""
        self._broadcast(self._history_delta())
        self._broadcast(Event("snapshot", dumps(self.store.snapshot())))

    def _broadcast(self, event: Event | None) -> None:
        if event is None:
            return
        for sub in list(self._subscribers):
            if sub.dropped:
                continue
            if sub.queue.qsize() >= MAX_QUEUED_EVENTS:
                sub.dropped = True
                sub.queue.put_nowait(None)  # the stream ends; the browser reconnects
                continue
            sub.queue.put_nowait(event)

    def _newest_loss_step(self) -> int:
        history = self.store.loss_history
        return history[-1]["step"] if history else -1

    def _history_delta(self) -> Event | None:
        """Loss points after the last sent step, quality points of validations since then."""
        loss: list[dict[str, Any]] = []
        for point in reversed(self.store.loss_history):  # newest first; stop at the sent ones
            if point["step"] <= self._last_loss_step:
                break
            loss.append(point)
        loss.reverse()
        quality_history = self.store.quality_history
        new_validations = min(
            self.store.validation.count - self._last_validation_count, len(quality_history)
        )
        quality = list(quality_history)[-new_validations:] if new_validations > 0 else []
        self._last_loss_step = self._newest_loss_step()
        self._last_validation_count = self.store.validation.count
        if not loss and not quality:
            return None
        delta = finite_or_none({"reset": False, "loss": loss, "quality": quality})
        return Event("history", dumps(delta))

    async def run(self) -> None:
        """Publish after every store change, at most `max_rate_hz` times a second."""
        version = self.store.version
        while not self._closed:
            version = await self.store.wait_for_change(version)
            if self._subscribers:
                self.publish_snapshot()
            else:  # nobody listens: only move the delta markers on
                self._last_loss_step = self._newest_loss_step()
                self._last_validation_count = self.store.validation.count
            await asyncio.sleep(self.min_interval_s)

    # --- subscribing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        sub = Subscriber()
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def initial_events(self) -> list[Event]:
        """What a new stream gets first: the snapshot, the full history, the recent log lines."""
        history = self.store.history()
        return [
            Event("snapshot", dumps(self.store.snapshot())),
            Event("history", dumps({"reset": True, **history})),
            *self._recent_logs,
        ]

    # --- command results -----------------------------------------------------------------------

    def watch_command(
        self, command: str, future: asyncio.Future[Any], *, request_id: str | None = None
    ) -> None:
        """Publish a `command` event when the supervisor has carried the command out (or not);
        `request_id` (a config change) goes into the event, for GET /api/requests/{id}."""
        about = (
            {"command": command}
            if request_id is None
            else {"command": command, "request_id": request_id}
        )

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                self.publish("command", {**about, "status": "cancelled"})
            elif (exc := f.exception()) is not None:
                self.publish("command", {**about, "status": "failed", "error": str(exc)})
            elif isinstance(result := f.result(), asyncio.Future):
                result.add_done_callback(done)  # e.g. a checkpoint: copied now, written later
            else:
                self.publish("command", {**about, "status": "done", "result": result})

        future.add_done_callback(done)

    def watch_validation(self, request: ValidationRequest) -> None:
        """Publish a `validation` event once a requested validation's Statistik file is written."""
        if request.id in self._watched:
            return  # coalesced: the first caller already watches it
        self._watched.add(request.id)

        def done(f: asyncio.Future[Any]) -> None:
            self._watched.discard(request.id)
            if not f.cancelled():
                f.exception()  # retrieved here; the request's status says what happened
            self.publish("validation", request.to_dict())

        request.result.add_done_callback(done)

    async def close(self) -> None:
        """End every stream (on_shutdown: before the runner waits for handlers)."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.queue.put_nowait(None)

    async def say_goodbye(self) -> None:
        """The run has stopped: send the final snapshot and a `stopped` event right away."""
        if self._subscribers and self.store.stopped:
            self.publish_snapshot()
            self.publish("stopped", {"reason": self.store.stop_reason})


async def next_event(sub: Subscriber, closed: asyncio.Future[Any]) -> Event | None:
    """The next event, or None once the hub ends the stream or the client went away."""
    if not sub.queue.empty():
        return sub.queue.get_nowait()
    getter = asyncio.ensure_future(sub.queue.get())
    await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    return None


async def stream_events(request: web.Request, hub: EventHub) -> web.StreamResponse:
    """`GET /api/events`: the stream of one browser tab."""
    async with sse_response(request) as response:
        closed = asyncio.ensure_future(response.wait())  # ends when a ping fails (client gone)
        try:
            with hub.subscribe() as sub:
                for i, event in enumerate(hub.initial_events()):
                    retry = RECONNECT_MS if i == 0 else None
                    await response.send(event.data, event=event.name, retry=retry)
                async for event in _events(sub, closed):
                    await response.send(event.data, event=event.name)
        except (ConnectionResetError, TimeoutError):
            pass  # the tab closed or stalled; its EventSource reconnects if it still exists
        finally:
            closed.cancel()
    return response


async def _events(sub: Subscriber, closed: asyncio.Future[Any]) -> AsyncIterator[Event]:
    while (event := await next_event(sub, closed)) is not None:
        yield event
