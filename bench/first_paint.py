"""How fast each dashboard page shows: first contentful paint and "ready", in Chromium.

    python -m bench.first_paint --executions 1000000 --rounds 3

The dataset (bench/dataset.py) is generated in a fresh database; the dashboard runs as
the Procfile's `web` does (Streamlit, local mode); Debian's Chromium opens each page by
its URL in a new tab, `--rounds` times. "First paint" is the browser's
first-contentful-paint entry; "ready" is when the page's main content is drawn and
Streamlit has stopped running the script (its status widget gone), measured from the
navigation start. Medians over the rounds, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text

from bench.common import (
    ROOT,
    add_server_args,
    bench_database,
    fmt,
    machine,
    report,
    start_servers,
)
from bench.dataset import generate

CHROMIUM = "/usr/bin/chromium"
# (page, path): the pages a person opens, the run and schedule pages by their own URL.
PAGES = [
    ("Overview", "/"),
    ("Schedules", "/schedules"),
    ("Executions", "/executions"),
    ("Automations", "/automations"),
    ("Queues", "/queues"),
    ("Execution page", "/execution?id={execution}"),
    ("Schedule page", "/schedule?id={schedule}"),
]
READY_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dashboard() -> Iterator[str]:
    """The dashboard on loopback, as `stepwise web` runs it; its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "dashboard/app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _time_page(browser: Any, url: str) -> tuple[float, float]:
    """(first contentful paint, ready) in ms for one fresh load of `url`."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(url, wait_until="commit")
        page.wait_for_selector(
            "[data-testid='stMain'] [data-testid='stHeading'],"
            " [data-testid='stMain'] [data-testid='stMarkdownContainer']",
            timeout=READY_S * 1000,
        )
        page.wait_for_function(
            "!document.querySelector('[data-testid=\"stStatusWidget\"]')",
            timeout=READY_S * 1000,
        )
        ready = page.evaluate("performance.now()")
        paint = page.evaluate(
            "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || 0"
        )
        return float(paint), float(ready)
    finally:
        page.close()


def measure(url: str, rounds: int) -> list[tuple[str, float, float]]:
    from playwright.sync_api import sync_playwright

    from db.session import session_scope

    with session_scope() as session:
        execution = session.execute(
            text("SELECT id FROM executions WHERE status = 'failed' LIMIT 1")
        ).scalar()
        schedule = session.execute(text("SELECT id FROM schedules ORDER BY id LIMIT 1")).scalar()
    timed: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in PAGES}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            for _ in range(rounds + 1):  # the first round warms the server's caches
                for name, path in PAGES:
                    full = url + path.format(execution=execution, schedule=schedule)
                    timed[name].append(_time_page(browser, full))
        finally:
            browser.close()
    return [
        (
            name,
            statistics.median(p for p, _ in runs[1:]),
            statistics.median(r for _, r in runs[1:]),
        )
        for name, runs in timed.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    try:
        with bench_database(servers):
            made = generate(args.executions)
            with dashboard() as url:
                results = measure(url, args.rounds)
    finally:
        servers.close()
    rows = [("page", "first contentful paint (ms)", "ready (ms)")]
    rows += [(name, fmt(round(paint)), fmt(round(ready))) for name, paint, ready in results]
    report(
        f"First paint at {args.executions:,} executions (median of {args.rounds} rounds)",
        started,
        rows,
        notes=f"Dataset: {made['executions']:,} executions, 1440 x 900, Chromium headless.",
    )


if __name__ == "__main__":
    main()
