"""Live-config changes (PATCH /api/config) against a real tiny CPU run over real HTTP.

Each change is checked at request time against the config as it will be once every change
accepted before it has applied, so two changes that do not fit together are never both
accepted. An accepted change gets a request id (GET /api/requests/{id}); one that fails when
applied is logged, its request reads `failed`, and runtime_config.json keeps only applied values.

Bad input -> what the user sees (test):
- MIN_LR=1e-4 and MAX_LR=5e-5 sent together -> one 202 with a request id, the other 409 naming
  both keys and the pending request (test_concurrent_conflicting_changes_one_accepted_one_409)
- MAX_LR=5e-5 once MIN_LR=1e-4 has applied -> 400 naming MIN_LR and MAX_LR (same test)
- a change the engine refuses at the step boundary -> an ERROR line in training.log naming the
  keys and the reason, the request `failed` with the same words, an SSE `command` event; the
  old values stay, in the engine too
  (test_a_change_that_fails_when_applied_is_logged_and_its_request_fails)
- a change accepted on top of one that then failed -> fails when applied, the same way (same)
- a change sent while the run stops -> 409 "the run is stopping"; one queued before the stop
  applies first (test_a_change_queued_before_a_stop_applies_and_later_ones_are_refused)
- a change still queued when MAX_STEPS ends the run -> its request `failed` ("the run
  stopped"), a WARNING line naming it, runtime_config.json without it
  (test_a_change_left_queued_when_the_run_ends_reads_failed)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from helpers import TINY_SETTINGS, wait_until
from web_helpers import LiveRun, next_event, read_events, running_panel, web_config

from vsr_async.errors import ConfigError, LiveConfigConflict, StartOnlyKeyError
from vsr_async.runtime import hooks, live_config
from vsr_async.runtime.live_config import check_against_pending
from vsr_async.settings import build_config

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the module-scoped run's loop

BASE_LR = {"MIN_LR": 1e-6, "MAX_LR": 1e-3}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveRun]:
    run_dir = tmp_path_factory.mktemp("live_config") / "Learn"
    async with running_panel(web_config(tiny_dataset, run_dir, **BASE_LR)) as running:
        await running.steps_advance(2)
        yield running


@contextlib.asynccontextmanager
async def no_step_boundary(live: LiveRun, before_step: int | None = None) -> AsyncIterator[None]:
    """Park the supervisor just after a step boundary, as one long training step would: until
    the block ends no boundary comes, so every change sent meanwhile is accepted but not
    applied yet. `before_step`: park before that step (default: the next one)."""
    worker = live.supervisor.worker
    train_step = worker.train_step
    parked, release = asyncio.Event(), asyncio.Event()

    async def gated() -> Any:
        if not parked.is_set() and (
            before_step is None or live.store.progress.step + 1 >= before_step
        ):
            parked.set()
            await release.wait()
        return await train_step()

    worker.train_step = gated
    try:
        await asyncio.wait_for(parked.wait(), 60)
        yield
    finally:
        release.set()
        del worker.train_step  # the worker's own method again


async def patch(http: aiohttp.ClientSession, live: LiveRun, changes: dict) -> tuple[int, Any]:
    async with http.patch(live.url("/api/config"), json=changes) as response:
        body = await response.json()
        if response.status == 202:
            assert response.headers["Location"] == body["url"]
        return response.status, body


async def request_json(http: aiohttp.ClientSession, live: LiveRun, request_id: str) -> dict:
    async with http.get(live.url(f"/api/requests/{request_id}")) as response:
        assert response.status == 200
        return await response.json()


async def until_finished(live: LiveRun, request_id: str) -> None:
    """Await the request's outcome (its future), whichever it is."""
    with contextlib.suppress(ConfigError):
        await asyncio.wait_for(live.supervisor.request(request_id).result, 60)


def saved(run_dir: Path) -> dict:
    """runtime_config.json as written (atomically: it always parses)."""
    path = run_dir / "runtime_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


@in_module_loop
async def test_concurrent_conflicting_changes_one_accepted_one_409(live, http) -> None:
    async with no_step_boundary(live):
        answers = await asyncio.gather(
            patch(http, live, {"MIN_LR": 1e-4}), patch(http, live, {"MAX_LR": 5e-5})
        )
        statuses = sorted(status for status, _ in answers)
        assert statuses == [202, 409], answers
        (accepted,) = [body for status, body in answers if status == 202]
        (refused,) = [body for status, body in answers if status == 409]
        request_id = accepted["request_id"]
        assert accepted["status"] == "queued" and accepted["command"] == "config"
        assert accepted["url"] == f"/api/requests/{request_id}"
        error = refused["error"]
        assert "MIN_LR" in error and "MAX_LR" in error and request_id in error, error
        queued = await request_json(http, live, request_id)
        assert queued["kind"] == "config" and queued["status"] == "queued"
        assert queued["changes"] == accepted["changes"] and queued["applied"] is None
        assert live.supervisor.pending_config.MIN_LR != live.supervisor.config.MIN_LR or (
            live.supervisor.pending_config.MAX_LR != live.supervisor.config.MAX_LR
        )

    await until_finished(live, request_id)
    done = await request_json(http, live, request_id)
    assert done["status"] == "done" and done["error"] is None, done
    assert done["applied"] == accepted["changes"] and isinstance(done["step"], int)
    key, value = next(iter(accepted["changes"].items()))
    assert live.store.config_live[key] == value
    assert live.supervisor.pending_config is live.supervisor.config

    # The refused change, sent again now that the accepted one has applied: wrong on its own.
    other = {"MIN_LR": 1e-4} if key == "MAX_LR" else {"MAX_LR": 5e-5}
    status, body = await patch(http, live, other)
    assert status == 400 and "MIN_LR" in body["error"] and "MAX_LR" in body["error"], body
    await live.wait_until(lambda: saved(live.supervisor.run_dir).get(key) == value)

    # Both keys in one request fit together and are accepted as one change.
    status, body = await patch(http, live, BASE_LR)
    assert status == 202, body
    await until_finished(live, body["request_id"])
    assert (await request_json(http, live, body["request_id"]))["applied"] == BASE_LR


@in_module_loop
async def test_a_change_that_fails_when_applied_is_logged_and_its_request_fails(live, http) -> None:
    worker = live.supervisor.worker
    refused_lr = 2e-3

    def refuse_on(engine: Any) -> None:
        def apply_or_refuse(config: Any, apply=engine.apply_config) -> None:
            apply(config)  # part of it is in the engine when it fails: the supervisor must undo
            if refused_lr == config.MAX_LR:
                raise RuntimeError("the engine refuses this learning rate")

        engine.apply_config = apply_or_refuse  # on the GPU thread, as the real one

    await worker.run_on_engine(refuse_on)
    log_path = live.supervisor.run_dir / "training.log"
    try:
        async with (
            aiohttp.ClientSession() as events_session,
            events_session.get(live.url("/api/events")) as stream,
        ):
            events = read_events(stream)
            await next_event(events, "snapshot")
            async with no_step_boundary(live):
                independent = await patch(http, live, {"WEIGHT_DECAY": 0.02})
                refused = await patch(http, live, {"MAX_LR": refused_lr})
                # Fits only once MAX_LR=2e-3 has applied; it fails when that one does.
                chained = await patch(http, live, {"MIN_LR": 1.5e-3})
            for status, body in (independent, refused, chained):
                assert status == 202, body
            ids = [body["request_id"] for _, body in (refused, chained, independent)]
            for request_id in ids:
                await until_finished(live, request_id)
            # The last the engine saw: the refused change (applied in part), then the undo.
            engine_lr = await worker.run_on_engine(lambda engine: engine.config.MAX_LR)
            event = await next_event(events, "command")
            while event.get("request_id") != ids[0]:
                event = await next_event(events, "command")
    finally:
        await worker.run_on_engine(lambda engine: delattr(engine, "apply_config"))  # its own

    failed = await request_json(http, live, ids[0])
    assert failed["status"] == "failed" and failed["applied"] is None, failed
    assert "MAX_LR=0.002" in failed["error"] and "refuses this learning rate" in failed["error"]
    assert event["status"] == "failed" and event["error"] == failed["error"]
    chain = await request_json(http, live, ids[1])
    assert chain["status"] == "failed" and "MIN_LR" in chain["error"], chain
    assert (await request_json(http, live, ids[2]))["status"] == "done"

    def logged() -> str:  # lines reach the file through the logging thread
        return log_path.read_text(encoding="utf-8")

    await live.wait_until(lambda: all(f"request {i}, at step" in logged() for i in ids[:2]))
    log_text = logged()
    for request_id in ids[:2]:
        (line,) = [ln for ln in log_text.splitlines() if f"request {request_id}, at step" in ln]
        assert "ERROR" in line and "failed" in line, line
    assert "MAX_LR=0.002" in log_text and "refuses this learning rate" in log_text

    # The previous values stay in force, in the engine too (the partial apply was undone).
    assert live.supervisor.config.MAX_LR == BASE_LR["MAX_LR"] == engine_lr
    engine_min_lr = await worker.run_on_engine(lambda engine: engine.config.MIN_LR)
    assert live.supervisor.config.MIN_LR == BASE_LR["MIN_LR"] == engine_min_lr
    await live.wait_until(lambda: saved(live.supervisor.run_dir).get("WEIGHT_DECAY") == 0.02)
    on_disk = saved(live.supervisor.run_dir)
    assert on_disk["MAX_LR"] == BASE_LR["MAX_LR"] and on_disk["MIN_LR"] == BASE_LR["MIN_LR"]
    await live.steps_advance(1)  # training goes on


@in_module_loop
async def test_a_change_queued_before_a_stop_applies_and_later_ones_are_refused(live, http) -> None:
    """Last in the module: it stops the run."""
    async with no_step_boundary(live):
        status, body = await patch(http, live, {"L1_WEIGHT": 0.5})
        assert status == 202, body
        live.supervisor.stop("test: stop with a change queued")
        status, refused = await patch(http, live, {"L1_WEIGHT": 0.7})
        assert status == 409 and "stopping" in refused["error"], refused
    assert await asyncio.wait_for(asyncio.shield(live.task), 120) == 0
    # Commands run in order: the change queued before the stop applied, and is on disk at exit.
    assert live.supervisor.request(body["request_id"]).to_dict()["status"] == "done"
    assert saved(live.supervisor.run_dir)["L1_WEIGHT"] == 0.5


@in_module_loop
async def test_a_change_left_queued_when_the_run_ends_reads_failed(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    last = 30
    config = web_config(tiny_dataset, tmp_path / "Learn", MAX_STEPS=last)
    async with (
        running_panel(config) as run,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        async with no_step_boundary(run, before_step=last):  # the last step is under way
            status, body = await patch(session, run, {"L1_WEIGHT": 0.5})
            assert status == 202, body
        assert await asyncio.wait_for(asyncio.shield(run.task), 120) == 0
    left = run.supervisor.request(body["request_id"])
    assert left.status == "failed" and "stopped" in left.error, left.to_dict()
    assert "L1_WEIGHT" not in saved(run.supervisor.run_dir)  # nothing was ever applied
    # run.execute() has closed the run's logging: every line is in the file.
    log_text = (run.supervisor.run_dir / "training.log").read_text(encoding="utf-8")
    (line,) = [ln for ln in log_text.splitlines() if body["request_id"] in ln and "not" in ln]
    assert "L1_WEIGHT=0.5" in line and "WARNING" in line, line


async def test_a_change_made_just_before_a_stop_is_in_runtime_config_after_exit(
    start_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """supervisor.apply_config, then stop at once: the change applies at the boundary, and
    runtime_config.json holds it when the run has ended, even when its write (a slow disk)
    outlasts the shutdown's wait for background tasks: the recorder's `stop` waits for it."""
    real_write = live_config.write_atomic_async

    async def slow_write(path: Path, data: bytes) -> None:  # fault injection: a slow disk
        await asyncio.sleep(1.0)
        await real_write(path, data)

    monkeypatch.setattr(live_config, "write_atomic_async", slow_write)
    monkeypatch.setattr(hooks, "DRAIN_TIMEOUT_S", 0.01)
    run = await start_run(MAX_STEPS=1_000_000, VAL_STEP_EVERY=1_000_000)
    await wait_until(lambda: run.store.progress.step >= 1, run.store, timeout=60)
    request = run.supervisor.apply_config({"L1_WEIGHT": 0.5})
    run.supervisor.stop("test: stop right after a change")
    await wait_until(lambda: run.supervisor.finished.is_set(), run.store, timeout=120)
    assert request.to_dict()["status"] == "done"
    assert saved(run.run_dir)["L1_WEIGHT"] == 0.5


# --- the request-time check on its own ------------------------------------------------------


def lr_config(**values: float):
    return build_config({**TINY_SETTINGS, "DATASET_ROOT": "/nonexistent", **values})


def test_check_against_pending_tells_a_conflict_from_a_bad_value() -> None:
    applied = lr_config(**BASE_LR)
    pending = applied.replace({"MIN_LR": 1e-4})
    queued = [("abc123", {"MIN_LR": 1e-4})]
    with pytest.raises(LiveConfigConflict) as conflict:
        check_against_pending(applied, pending, {"MAX_LR": 5e-5}, queued)
    message = str(conflict.value)
    assert "MIN_LR" in message and "MAX_LR" in message and "abc123" in message
    # Wrong on its own (out of range): a plain ConfigError (400), whatever is pending.
    with pytest.raises(ConfigError) as bad:
        check_against_pending(applied, pending, {"MAX_LR": 5.0}, queued)
    assert not isinstance(bad.value, LiveConfigConflict) and "MAX_LR" in str(bad.value)
    with pytest.raises(StartOnlyKeyError):
        check_against_pending(applied, pending, {"N_FEATS": 16}, queued)
    # Fits only on top of the pending change: accepted (it applies after that one).
    raised = applied.replace({"MAX_LR": 0.5})
    fits = check_against_pending(applied, raised, {"MIN_LR": 0.2}, [("x", {"MAX_LR": 0.5})])
    assert fits.MIN_LR == 0.2 and fits.MAX_LR == 0.5
