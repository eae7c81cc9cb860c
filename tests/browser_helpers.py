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
