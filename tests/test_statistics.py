"""The Statistik writer and atomic writes, on real files."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from vsr_async.files.atomic import (
    remove_stale_temps,
    temp_path_for,
    write_atomic,
    write_atomic_async,
)
from vsr_async.files.statistics import (
    StatisticsWriter,
    list_statistics,
    remove_stale_statistics_temps,
    serialize_snapshot,
    statistics_step,
)
from vsr_async.runtime.json_values import finite_or_none


def test_serializer_is_strict_utf8_json() -> None:
    snapshot = finite_or_none({"lr_phase_name": "Aufwärmen", "x": float("nan"), "y": [1.5]})
    data = serialize_snapshot(snapshot)
    assert data.decode("utf-8").count("\n") >= 3  # indent=2
    assert "Aufwärmen" in data.decode("utf-8")  # ensure_ascii=False
    assert json.loads(data) == {"lr_phase_name": "Aufwärmen", "x": None, "y": [1.5]}
    with pytest.raises(ValueError):
        serialize_snapshot({"x": float("inf")})  # non-finite never reaches a file


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("Statistik_0.json", 0),
        ("Statistik_1200.json", 1200),
        ("Statistik_01.json", None),
        ("Statistik_-1.json", None),
        ("Statistik_1.json.tmp", None),
        (".Statistik_5.json.1-abc.tmp", None),
        ("Statistik_1.2.json", None),
    ],
)
def test_statistics_step(name: str, step: int | None) -> None:
    assert statistics_step(name) == step


async def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "Statistik_3.json"
    await write_atomic_async(target, b'{"a": 1}')
    await write_atomic_async(target, b'{"a": 2}')
    write_atomic(target, b'{"a": 3}')
    assert json.loads(target.read_text()) == {"a": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Statistik_3.json"]


async def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "Statistik_3.json"
    target.write_text("old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(OSError):
        await write_atomic_async(tmp_path / "blocker", b"new")  # rename onto a directory
    assert target.read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stale_temps_removed(tmp_path: Path) -> None:
    stale = temp_path_for(tmp_path / "Statistik_7.json")
    stale.write_text("{half")
    other = tmp_path / "notes.tmp"
    other.write_text("user file")
    assert remove_stale_statistics_temps(tmp_path) == [stale]
    assert other.exists()
    assert remove_stale_temps(tmp_path / "missing") == []


async def test_writer_orders_writes_and_lists_them(tmp_path: Path) -> None:
    written: list[str] = []
    writer = StatisticsWriter(tmp_path, on_written=written.append)
    writer.start()
    futures = [writer.submit(step, {"step_current": step}) for step in (10, 20, 30)]
    paths = await asyncio.gather(*futures)
    assert (
        [p.name for p in paths]
        == written
        == [
            "Statistik_10.json",
            "Statistik_20.json",
            "Statistik_30.json",
        ]
    )
    assert [step for step, _ in list_statistics(tmp_path)] == [10, 20, 30]
    assert await writer.close()


async def test_writer_keeps_failed_snapshot_and_retries_it_first(tmp_path: Path) -> None:
    errors: list[str] = []
    written: list[str] = []
    writer = StatisticsWriter(tmp_path, on_written=written.append, on_error=errors.append)
    writer.start()
    (tmp_path / "Statistik_5.json").mkdir()  # the target cannot be replaced: a real OSError
    with pytest.raises(OSError, match=r"could not write Statistik_5\.json"):
        await writer.submit(5, {"step_current": 5})
    assert errors and "Statistik_5.json" in errors[0]
    assert writer.pending_steps == [5]
    (tmp_path / "Statistik_5.json").rmdir()  # the disk "recovers"
    await writer.submit(6, {"step_current": 6})
    assert written == ["Statistik_5.json", "Statistik_6.json"]  # the old one first, in order
    assert json.loads((tmp_path / "Statistik_5.json").read_text()) == {"step_current": 5}
    assert writer.pending_steps == []
    assert await writer.close()


async def test_writer_does_not_block_the_loop(tmp_path: Path) -> None:
    """A large snapshot is written while the loop keeps ticking (aiofiles' executor)."""
    writer = StatisticsWriter(tmp_path)
    writer.start()
    big = {"validation_images": [{"name": f"img{i}", "psnr": i * 0.5} for i in range(40_000)]}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await writer.submit(1, big)
    task.cancel()
    assert ticks > 5  # the loop ran other work while the file was being written
    assert os.path.getsize(tmp_path / "Statistik_1.json") > 1_000_000
    assert await writer.close()
