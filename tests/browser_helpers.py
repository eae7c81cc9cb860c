"""Real-browser helpers: Debian's Chromium (/usr/bin/chromium, headless) driven by Playwright for Python.

Every wait is on a condition in the page (an element, a dataset attribute the page script sets once the server has
acknowledged a change), never a fixed sleep.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.testing import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium for the duration of the block."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make sysdeps` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, url: str, name: str, password: str = PASSWORD) -> None:
    """The login form, then wait for the UI to have loaded its worklist."""
    page.goto(f"{url}/")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-button")
    page.wait_for_url("**/ui/**")
    page.wait_for_selector("#bc-worklist", timeout=60_000)


def wait_case_open(page: Any) -> str:
    """Wait until a case is drawn with its answer panel; returns the view's nonce."""
    page.wait_for_selector("#bc-base[data-loaded='1']", timeout=120_000)
    page.wait_for_selector(".bc-answer[data-nonce]", timeout=60_000)
    return page.get_attribute(".bc-answer[data-nonce]", "data-nonce")


def acknowledged(page: Any) -> int:
    return int(page.get_attribute(".bc-answer[data-nonce]", "data-acknowledged") or 0)


def wait_acknowledged(page: Any, more_than: int) -> None:
    page.wait_for_function(f"+(document.querySelector('.bc-answer[data-nonce]').dataset.acknowledged || 0) > "
                           f"{more_than}", timeout=60_000)


def tick(page: Any, name: str) -> None:
    """Tick a finding in the answer panel and wait until the server acknowledged it (its event is committed)."""
    before = acknowledged(page)
    page.locator(f".bc-finding[data-class='{name}'] .bc-label").click()
    wait_acknowledged(page, before)


def rate(page: Any, name: str, value: int) -> None:
    """Set a ticked finding's confidence rating and wait for the acknowledgement."""
    before = acknowledged(page)
    page.locator(f".bc-finding[data-class='{name}'] .bc-rating").fill(str(value))
    wait_acknowledged(page, before)


def submit(page: Any) -> None:
    """Submit & next, then wait until the page shows what comes next (another view, or no case)."""
    nonce = page.get_attribute(".bc-answer[data-nonce]", "data-nonce")
    page.click("#bc-submit")
    page.wait_for_function(f"!document.querySelector('.bc-answer[data-nonce=\"{nonce}\"]')", timeout=120_000)


# ---------------------------------------------------------------------------------------------------- the viewer
def open_case_in_worklist(page: Any, case: str | None) -> None:
    """Open ``case`` from the worklist (None: the top case), then wait until its image is drawn and, in an AI arm,
    its first mask layer painted."""
    page.wait_for_function("document.querySelector('#bc-progress') && "
                           "document.querySelector('#bc-progress').innerText.includes('annotated')", timeout=60_000)
    open_case(page, case)


def open_case(page: Any, case: str | None) -> None:
    """Open ``case`` from the worklist on screen (None: the top case) and wait for its image and first layer."""
    if case is None:
        page.click("#bc-open-top")
    else:
        # Gradio's table may render a cell twice (a hidden wrapper and its text span): click a visible one
        page.locator("#bc-worklist").get_by_text(case, exact=True).filter(visible=True).first.click()
    page.wait_for_selector("#bc-base[data-loaded='1']", timeout=120_000)
    page.wait_for_function("window.__bcStats.some(s => s.kind === 'layer') || "
                           "document.querySelector('.bc-slot').dataset.ai === '0'", timeout=120_000)


def wait_full_pixels(page: Any) -> None:
    """Wait until the viewer draws the full-bit-depth samples of /pixels (not the 8-bit base.png fallback)."""
    page.wait_for_function("window.__bcViewer.view() && window.__bcViewer.view().full !== null", timeout=60_000)
    if not page.evaluate("window.__bcViewer.view().full"):
        pytest.fail("the viewer fell back to the 8-bit base.png: GET /api/v1/view/{nonce}/pixels is not there")


def wait_stats(page: Any, kind: str, n: int) -> None:
    """Wait until ``n`` paints of ``kind`` (click, undo, box, stroke, slice, …) are in window.__bcStats."""
    page.wait_for_function(f"window.__bcStats.filter(s => s.kind === '{kind}').length >= {n}", timeout=120_000)


def stage_box(page: Any) -> dict[str, float]:
    """The viewer's viewport (#bc-stage) in client CSS px: x, y, width, height."""
    return page.locator("#bc-stage").bounding_box()


def base_gray(page: Any, points: list[tuple[int, int]]) -> list[int]:
    """The displayed gray (red channel) of #bc-base at display-grid pixels (x, y), read back with getImageData."""
    return page.evaluate("""(points) => { const c = document.querySelector('#bc-base');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return points.map(([x, y]) => d[(y * c.width + x) * 4]); }""", [[int(x), int(y)] for x, y in points])
