"""Debian's Chromium driven by Playwright: how the browser tests launch it, open windows, wait
for Streamlit and look at what a page did."""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (it needs privileges a container lacks), and nothing fetched in the
# background: every request seen is one a page made.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
TALL = {"width": 1440, "height": 1900}  # a desktop page seen whole, without scrolling
SHOTS = Path(__file__).resolve().parent.parent / "tests" / "screenshots"
TIMEOUT_MS = 30_000  # for each action on a page: Streamlit reruns its script on each


MISSING = (
    f"browser tests skipped: {CHROMIUM} is missing (`make test` installs Debian's chromium "
    "when it runs as root; or apt-get install chromium)"
)


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (one line), or None where they can."""
    return None if CHROMIUM.exists() else MISSING


def require_chromium() -> None:
    """Skip the test where Chromium is missing; in CI (CI=true), where it must be, fail it."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)


@contextmanager
def launch(playwright: Any, *extra_args: str) -> Iterator[Any]:
    """Chromium launched headless by `playwright` with CHROMIUM_ARGS and `extra_args`;
    closed on exit."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )
    try:
        yield browser
    finally:
        browser.close()


@contextmanager
def framing_page(*urls: str) -> Iterator[str]:
    """The address of a page on another origin (another loopback port) that frames each of
    `urls` in an iframe, as a clickjacking site would."""
    frames = "".join(
        f'<iframe src="{html.escape(u)}" width="800" height="600"></iframe>' for u in urls
    )
    body = f"<!doctype html><title>elsewhere</title>{frames}".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def window(browser: Any, **options: Any) -> Iterator[Any]:
    """A page in a new context of `browser` (Playwright's `new_context` options: viewport,
    timezone...), sharing no cookies with any other, each action waiting up to
    TIMEOUT_MS; closed on exit."""
    context = browser.new_context(**options)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
    finally:
        context.close()


def settle(page: Any) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS
    )
    page.wait_for_timeout(800)


def shoot(page: Any, name: str) -> None:
    """Save the whole page to tests/screenshots/<name>.png for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # data grids and charts draw on canvases after the script ends
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_exception(page: Any) -> None:
    """The page shows no exception, and is not the "Page not found" of an unknown URL."""
    assert page.locator('[data-testid="stException"]').count() == 0, page.content()[:2000]
    # A URL no page answers to: Streamlit says so in a dialog over the main page.
    assert page.get_by_text("Page not found").count() == 0, page.url


def outside_requests(page: Any) -> list[str]:
    """Every request the page makes that leaves 127.0.0.1 (filled in as the page runs)."""
    seen: list[str] = []

    def check(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
            seen.append(request.url)

    page.on("request", check)
    return seen
