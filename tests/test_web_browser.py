"""The panel in headless Chromium against a real tiny CPU run: live step counter, Validate,
Pause/Resume, Download JSON, the live config view, two tabs, and Stop with its confirmation.

Uses the system Chromium (/usr/bin/chromium, or $VSR_CHROMIUM); nothing is downloaded. Without
Chromium or the playwright package the test is skipped, saying which is missing; with
VSR_REQUIRE_BROWSER=1 (set by .ci/run) that skip is a failure, so CI always runs it. Leaves a
screenshot at test-output/panel.png.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import REPO
from web_helpers import BROWSER_ARGS, LiveRun, running_panel, web_config

from web.server import WebPanel

CHROMIUM = Path(os.environ.get("VSR_CHROMIUM", "/usr/bin/chromium"))


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


MISSING = browser_missing()
if MISSING and os.environ.get("VSR_REQUIRE_BROWSER") != "1":
    pytest.skip(MISSING, allow_module_level=True)
if not MISSING:
    from playwright.async_api import Dialog, Page, async_playwright, expect

WAIT_MS = 60_000  # generous: the 2-core CI machine is often busy
SCREENSHOT = REPO / "test-output" / "panel.png"


async def shown_step(page: Page) -> int:
    text = await page.locator("#step-counter").text_content() or ""
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


async def wait_for_shown_step_above(page: Page, step: int) -> None:
    await page.wait_for_function(
        "n => parseInt(document.getElementById('step-counter').textContent.replace(/,/g, '')) > n",
        arg=step,
        timeout=WAIT_MS,
    )


async def test_panel_in_a_browser(tiny_dataset: Path, tmp_path: Path) -> None:
    if MISSING:  # only with VSR_REQUIRE_BROWSER=1: CI must not pass without the browser test
        pytest.fail(f"{MISSING}; VSR_REQUIRE_BROWSER=1 requires the browser test", pytrace=False)
    config = web_config(tiny_dataset, tmp_path / "Learn")
    async with running_panel(config) as live, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": 1440, "height": 1000}, accept_downloads=True
            )
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            await page.goto(live.url("/"))
            await exercise_panel(live, page, context, problems)
            assert not [p for p in problems if p.startswith("page error")]
        finally:
            await browser.close()


async def exercise_panel(live: LiveRun, page: Page, context, problems: list[str]) -> None:
    # the step counter follows the run
    await expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    await wait_for_shown_step_above(page, 0)
    await wait_for_shown_step_above(page, await shown_step(page))
    await expect(page.locator("#run-state")).to_have_text("Training", timeout=WAIT_MS)

    # the job: the global batch always, the rank count only for a torchrun job of several ranks
    config = live.supervisor.config
    await expect(page.locator("#job")).to_have_text(
        f"global batch {config.BATCH_SIZE * config.ACCUMULATION_STEPS}"
    )
    assert await page.locator("#ranks").is_hidden()
    facts = {key: live.store.extra[key] for key in ("world_size", "global_batch")}
    live.store.set_extra(world_size=2, global_batch=8)  # as the supervisor hands a job's facts
    await expect(page.locator("#job")).to_have_text("ranks 2 · global batch 8")
    await expect(page.locator("#ranks")).to_have_text("2 ranks")
    live.store.set_extra(**facts)
    await expect(page.locator("#ranks")).to_be_hidden()

    # a second tab follows the same run
    second = await context.new_page()
    await second.goto(live.url("/"))
    await wait_for_shown_step_above(second, await shown_step(page))
    await second.close()

    # Validate: the quality appears, the Statistik file is listed
    quality = page.locator("#quality-ki")
    await expect(quality).to_have_text("—")
    await page.get_by_role("button", name="Validate").click()
    await expect(quality).to_have_text(re.compile(r"^\d+\.\d\d %$"), timeout=WAIT_MS)
    await live.wait_until(lambda: live.store.last_statistics_written is not None)
    name = live.store.last_statistics_written
    assert name is not None
    await expect(page.get_by_role("link", name=name)).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#strips img").first).to_be_visible(timeout=WAIT_MS)
    improvement = await page.locator("#quality-improvement").text_content()
    assert improvement and improvement.endswith(" %")

    # Pause: the run pauses and the counter stops; Resume: it moves again
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("#run-state")).to_have_text("Paused", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Resume")).to_be_visible()
    paused_at = live.store.progress.step
    assert live.store.training_paused
    await page.wait_for_timeout(600)  # negative check: nothing moves while paused
    assert live.store.progress.step == paused_at and await shown_step(page) == paused_at
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("#run-state")).to_have_text("Training", timeout=WAIT_MS)
    await wait_for_shown_step_above(page, paused_at)

    # Download JSON: the same keys as the Statistik file written by the validation
    async with page.expect_download(timeout=WAIT_MS) as download_info:
        await page.get_by_role("button", name="Download JSON").click()
    download = await download_info.value
    assert re.fullmatch(r"Statistik_\d+\.json", download.suggested_filename)
    downloaded = json.loads(Path(await download.path()).read_text(encoding="utf-8"))
    saved = json.loads((live.supervisor.run_dir / name).read_text(encoding="utf-8"))
    assert set(downloaded) == set(saved)

    await page.get_by_role("button", name="Validate").click()  # a second point on the chart
    await live.wait_until(lambda: live.store.validation.count >= 2)
    await wait_for_shown_step_above(page, live.store.progress.step + 4)
    await expect(page.locator("#quality-ki")).to_have_text(re.compile(r"^\d+\.\d\d %$"))
    await page.evaluate("window.scrollTo(0, 0); document.getElementById('toast').hidden = true")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)

    # the live config view: a change is queued, applied and shown
    max_lr = page.get_by_label("MAX_LR", exact=True)
    await max_lr.fill("0.002")
    await page.get_by_role("button", name="Apply changes").click()
    await expect(page.locator("#config-message")).to_contain_text("Queued: MAX_LR = 0.002")
    await live.wait_until(lambda: live.store.config_live["MAX_LR"] == 0.002)
    assert problems == []  # from here on the browser logs the 400 we provoke
    await max_lr.fill("7")
    await page.get_by_role("button", name="Apply changes").click()
    await expect(page.locator("#config-message")).to_contain_text("MAX_LR: must be in [1e-12, 1]")

    # a server that vanishes (no goodbye) shows as a lost connection, not as a stopped run
    await expect_connection_lost_shown(live, context)

    # Stop asks first: cancelling keeps the run, confirming stops it and the panel says so
    dialogs: list[str] = []

    async def answer(dialog: Dialog, accept: bool) -> None:
        dialogs.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", lambda d: answer(d, False))
    await page.get_by_role("button", name="Stop").click()
    await wait_for_shown_step_above(page, await shown_step(page))
    assert not live.task.done() and len(dialogs) == 1 and "Stop the training run?" in dialogs[0]
    page.once("dialog", lambda d: answer(d, True))
    await page.get_by_role("button", name="Stop").click()
    await expect(page.locator("#banner-stopped")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#run-state")).to_have_text("Stopped", timeout=WAIT_MS)
    assert await live.task == 0
    await expect(page.locator("#connection")).to_have_text("offline", timeout=WAIT_MS)
    assert await page.locator("#banner-connection").is_hidden()
    assert await page.get_by_role("button", name="Validate").is_disabled()


async def expect_connection_lost_shown(live: LiveRun, context) -> None:
    extra = WebPanel(live.supervisor, live.supervisor.config.replace({"WEB_PORT": 0}))
    await extra.start()
    page = await context.new_page()
    try:
        await page.goto(extra.url)
        await expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
        await extra.stop()  # the run goes on; only this server is gone
        await expect(page.locator("#banner-connection")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#connection")).to_have_text("connection lost")
        await expect(page.locator("#run-state")).to_have_text(re.compile("^last seen: "))
        assert await page.locator("#banner-stopped").is_hidden()
    finally:
        await page.close()
        await extra.stop()
