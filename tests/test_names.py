"""File names of any bytes, and a Statistik writer that cannot die (issue 10, items 2, 8, 10).

A file named with the bytes b'\\xff\\xfe.png' (not valid UTF-8) in the training and validation
sets: every validation still writes its Statistik file, the name shows escaped ('\\xff\\xfe'),
`GET /api/snapshot` answers 200, `check` names the file and shutdown stays quick. The writer
survives failures that are not OSErrors and hung writes. A symlink loop or a folder named like
an image is one line naming the path, exit 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import TINY_SETTINGS, run_cli, wait_until, write_patch_dataset, write_toml
from web_helpers import running_panel, web_config

from vsr_async.data.layout import scan_dataset
from vsr_async.errors import DatasetError
from vsr_async.files import statistics
from vsr_async.files.statistics import StatisticsWriter, serialize_snapshot
from vsr_async.names import display_name, displayable, undecodable_names
from vsr_async.runtime.json_values import finite_or_none
from vsr_async.runtime.launch import Run

BAD = os.fsdecode(b"\xff\xfe.png")  # '\udcff\udcfe.png': os.fsdecode's surrogate escapes
SHOWN = "\\xff\\xfe"  # how the panel, Statistik files and `check` show it


def test_display_name_escapes_undecodable_bytes_only() -> None:
    assert display_name(BAD) == SHOWN + ".png"
    assert display_name(b"\xff\xfe.png") == SHOWN + ".png"
    assert display_name(Path("Val/GT") / BAD) == f"Val/GT/{SHOWN}.png"
    assert display_name("Aufwärmen_ü.png") == "Aufwärmen_ü.png"  # valid UTF-8 stays as it is
    assert display_name("\ud800x") == "\\ud800x"  # a lone surrogate that is no file byte
    assert undecodable_names(["a.png", BAD, BAD]) == [SHOWN + ".png"]
    assert displayable({BAD: [BAD, 1.5, None]}) == {SHOWN + ".png": [SHOWN + ".png", 1.5, None]}


def test_serializer_escapes_instead_of_raising() -> None:
    """The last line of defence: an unescaped name in a snapshot still gives valid UTF-8 JSON."""
    data = serialize_snapshot({"corrupt_files": [BAD], "lr_phase_name": "Aufwärmen"})
    assert json.loads(data.decode("utf-8")) == {
        "corrupt_files": [SHOWN + ".png"],
        "lr_phase_name": "Aufwärmen",
    }
    assert finite_or_none({"name": BAD}) == {"name": SHOWN + ".png"}


def add_undecodable_files(dataset: Path) -> None:
    """A valid validation pair and a training pair whose GT pixels are cut off, both named
    b'\\xff\\xfe.png': the training one passes the header check and fails when loaded."""
    for part in ("GT", "LR"):
        shutil.copyfile(dataset / "Val" / part / "0000.png", dataset / "Val" / part / BAD)
        shutil.copyfile(dataset / "Patches" / part / "0000.png", dataset / "Patches" / part / BAD)
    broken = dataset / "Patches" / "GT" / BAD
    broken.write_bytes(broken.read_bytes()[:60])  # signature + IHDR intact, image data gone


@pytest.fixture
def odd_dataset(tmp_path: Path) -> Path:
    dataset = write_patch_dataset(tmp_path / "dataset", train=6, val=2)
    add_undecodable_files(dataset)
    return dataset


async def test_undecodable_names_keep_statistics_and_panel_working(
    odd_dataset: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "Learn"
    config = web_config(odd_dataset, run_dir, VAL_STEP_EVERY=3)
    async with running_panel(config) as live:
        store = live.store
        await live.wait_until(lambda: store.last_statistics_written == "Statistik_6.json", 120)
        await live.wait_until(lambda: store.skipped_files != [], 120)  # the cut-off GT
        async with aiohttp.ClientSession() as http:
            async with http.get(live.url("/api/snapshot")) as resp:
                assert resp.status == 200, await resp.text()
                snap = await resp.json()
            async with http.get(live.url("/api/snapshot/download")) as resp:
                assert resp.status == 200
                downloaded = json.loads(await resp.read())
            async with http.get(live.url("/api/validation/images")) as resp:
                assert resp.status == 200
                strips = json.dumps(await resp.json())
        started = time.monotonic()
        live.supervisor.stop("test finished")
        assert await asyncio.wait_for(asyncio.shield(live.task), 60) == 0
        shutdown_s = time.monotonic() - started
    print(f"shutdown took {shutdown_s:.2f} s")
    assert shutdown_s < 20, "shutdown is bounded (it idled 60 s when the writer had died)"

    assert SHOWN in [m["name"] for m in snap["validation_images"]]
    assert any(p.endswith(f"Patches/GT/{SHOWN}.png") for p in snap["corrupt_files"])
    assert snap["last_statistics_error"] is None
    assert SHOWN in [m["name"] for m in downloaded["validation_images"]]
    assert SHOWN.replace("\\", "\\\\") in strips  # the strips' names, JSON-escaped
    for step in (3, 6):
        text = (run_dir / f"Statistik_{step}.json").read_text(encoding="utf-8")  # strict UTF-8
        stats = json.loads(text)
        assert stats["validation_step"] == step
        assert SHOWN in [m["name"] for m in stats["validation_images"]]


async def test_writer_survives_a_failure_that_is_not_an_oserror(
    start_run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The serializer raises once (TypeError): logged naming the file, shown in the snapshot,
    kept, and written again before the next validation's file."""
    real = statistics.serialize_snapshot
    calls: list[int] = []

    def fails_once(snapshot: dict[str, Any]) -> bytes:
        calls.append(snapshot["validation_step"])
        if len(calls) == 1:
            raise TypeError("Object of type Tensor is not JSON serializable")
        return real(snapshot)

    monkeypatch.setattr(statistics, "serialize_snapshot", fails_once)
    caplog.set_level(logging.ERROR, logger="vsr_async.files.statistics")
    run: Run = await start_run(VAL_STEP_EVERY=3)
    store = run.store
    errors: list[str] = []
    writer = run.supervisor.statistics
    shown = writer._on_error  # the store's statistics_failed: what the snapshot shows

    def record(message: str) -> None:
        shown(message)
        errors.append(store.last_statistics_error)

    writer._on_error = record
    await wait_until(lambda: store.last_statistics_written == "Statistik_6.json", store, 120)
    assert errors and "Statistik_3.json" in errors[0] and "TypeError" in errors[0]
    logged = [r.getMessage() for r in caplog.records if "Statistik_3.json" in r.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0], logged
    assert calls[:3] == [3, 3, 6]  # the failed one retried first, then the new one
    for step in (3, 6):
        assert (
            json.loads((run.run_dir / f"Statistik_{step}.json").read_bytes())["validation_step"]
            == step
        )
    pending = run.supervisor.statistics.pending_steps  # a later validation may be in flight
    assert 3 not in pending and 6 not in pending


async def test_unserialisable_snapshot_stays_pending_and_later_ones_are_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    writer = StatisticsWriter(tmp_path, on_error=errors.append)
    writer.start()
    with pytest.raises(OSError, match=r"could not write Statistik_1\.json: TypeError"):
        await writer.submit(1, {"bad": object()})
    assert (await writer.submit(2, {"validation_step": 2})).name == "Statistik_2.json"
    assert json.loads((tmp_path / "Statistik_2.json").read_text()) == {"validation_step": 2}
    assert writer.pending_steps == [1] and len(errors) == 2  # tried again with step 2
    started = time.monotonic()
    assert await writer.close(5) is False  # something stayed unwritten: said, not hidden
    assert time.monotonic() - started < 5
    assert not (tmp_path / "Statistik_1.json").exists()


async def test_close_is_bounded_with_a_hung_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = statistics.serialize_snapshot

    def hangs(snapshot: dict[str, Any]) -> bytes:
        release.wait(30)  # stuck like a write on a dead mount, in the writer's thread
        return real(snapshot)

    monkeypatch.setattr(statistics, "serialize_snapshot", hangs)
    writer = StatisticsWriter(tmp_path)
    writer.start()
    written = writer.submit(4, {"validation_step": 4})
    started = time.monotonic()
    assert await writer.close(0.5) is False
    elapsed = time.monotonic() - started
    print(f"close with a hung write took {elapsed:.2f} s")
    assert elapsed < 3
    assert writer.pending_steps == [4]
    with pytest.raises(OSError, match=r"Statistik_4\.json was not written"):
        await written
    release.set()


async def test_close_writes_what_a_dead_task_left(tmp_path: Path) -> None:
    writer = StatisticsWriter(tmp_path)
    writer.start()
    assert writer._task is not None
    writer._task.cancel()  # the task is gone (it used to die silently on the first error)
    await asyncio.wait({writer._task})
    written = writer.submit(7, {"validation_step": 7})
    assert await writer.close(10) is True
    assert (await written).name == "Statistik_7.json"
    assert json.loads((tmp_path / "Statistik_7.json").read_text()) == {"validation_step": 7}


def _cli_config(tmp_path: Path, dataset: Path) -> Path:
    values = {
        **TINY_SETTINGS,
        "DATASET_ROOT": str(dataset),
        "DATA_ROOT": str(tmp_path / "Learn"),
        "MAX_STEPS": 2,
    }
    return write_toml(tmp_path / "config.toml", values)


def test_check_names_undecodable_files(odd_dataset: Path, tmp_path: Path) -> None:
    """Decision: `check` accepts such files (they train and validate) and warns, naming them."""
    result = run_cli("check", "--config", str(_cli_config(tmp_path, odd_dataset)))
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stdout.splitlines() if "not valid UTF-8" in line]
    assert len(warning) == 1, result.stdout
    assert f"Patches/GT/{SHOWN}.png" in warning[0] and f"Val/LR/{SHOWN}.png" in warning[0]


@pytest.fixture
def small_dataset(tmp_path: Path, tiny_dataset: Path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "dataset"))


def _file_loop(dataset: Path) -> Path:
    gt = dataset / "Patches" / "GT"
    (gt / "a.png").symlink_to("b.png")
    (gt / "b.png").symlink_to("a.png")
    return gt / "a.png"


def _folder_loop(dataset: Path) -> Path:
    (dataset / "Patches" / "GT" / "loop").symlink_to(dataset / "Patches" / "GT")
    return dataset / "Patches" / "GT" / "loop"


@pytest.mark.parametrize(("command", "make_loop"), [("check", _file_loop), ("train", _folder_loop)])
def test_symlink_loop_is_one_line(
    small_dataset: Path, tmp_path: Path, command: str, make_loop: Callable[[Path], Path]
) -> None:
    where = make_loop(small_dataset)
    args = [command, "--config", str(_cli_config(tmp_path, small_dataset))]
    result = run_cli(*args, *(["--no-web", "--no-keyboard"] if command == "train" else []))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error:")]
    assert errors == [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(where) in errors[0] and "symbolic link loop" in errors[0]


def test_frame_layout_clip_link_loop(tmp_path: Path) -> None:
    (tmp_path / "GT" / "clip").mkdir(parents=True)
    (tmp_path / "Val" / "GT").mkdir(parents=True)
    (tmp_path / "GT" / "again").symlink_to(tmp_path / "GT")
    with pytest.raises(DatasetError, match=r"GT/again: symbolic link loop"):
        scan_dataset(tmp_path, "frames", 3, 3, 24)


@pytest.mark.parametrize("part", ["Patches/GT", "Val/LR"])
def test_folder_named_like_an_image_says_so(small_dataset: Path, part: str) -> None:
    folder = small_dataset / part / "0000.png"
    folder.unlink()
    folder.mkdir()
    with pytest.raises(DatasetError) as caught:
        scan_dataset(small_dataset, "patches", 3, 3, 24)
    assert str(caught.value) == f"dataset {folder}: is a directory, not an image file"
