"""Helpers of the web UI's browser tests: a signed-in page, screenshots, waiting on the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.e2e.conftest import SCREENSHOTS, UiServer

PAGES = ("models", "deployments", "instances", "connections", "keys", "usage", "events", "playground")
TIMEOUT_MS = 60_000


@contextmanager
def signed_in(browser: Any, ui: UiServer, key: str | None = None, **context: Any) -> Iterator[Any]:
    """A page of a fresh browser context, signed in with ``key`` (the admin key by default)."""
    ctx = browser.new_context(base_url=ui.url, **context)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = ctx.new_page()
        page.goto("/ui/models")
        page.wait_for_url(re.compile(r"/ui/signin"))
        page.fill("#key", key or ui.admin_key)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ui/models$"))
        yield page
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    """A screenshot of the whole page in test-artifacts/ui/ (not committed)."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def row(page: Any, table: str, name: str) -> Any:
    return page.locator(f'#{table} tbody tr[data-name="{name}"]')
