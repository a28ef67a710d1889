"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

Starts `streamlit run dashboard/app.py` against the test database, creates a
schedule through the dialog, sees it listed with its next run, opens an
execution's step timeline, and saves a screenshot of every page to
tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from db import queries
from db.models import StepRun
from db.session import session_scope
from testkit.factories import ADMIN, add_runs, make_automation, make_workspace

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard_url() -> Iterator[str]:
    port = free_port()
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"streamlit did not start:\n{out}")
        time.sleep(0.3)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def browser_page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1440, "height": 1900}, timezone_id="America/New_York"
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()


def settle(page: Any) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000
    )
    page.wait_for_timeout(800)


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # data grids and charts draw on canvases after the script ends
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_exception(page: Any) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.content()[:2000]


def test_dashboard_in_a_real_browser(dashboard_url: str, browser_page: Any) -> None:
    # given an automation with a finished run that has a step timeline
    page = browser_page
    auto = make_automation(name="Browser demo", steps=2)
    ok, failed = add_runs(
        auto,
        [{"status": "succeeded"}, {"status": "failed", "error": "step 2: HTTP 503 from agent"}],
    )
    with session_scope() as session:
        session.execute(
            insert(StepRun),
            [
                {
                    "execution_id": failed,
                    "step_number": 1,
                    "attempt": 1,
                    "status": "succeeded",
                    "request": {"message": "do part 1"},
                    "response_status": 200,
                    "response_body": '{"output": "part 1 done"}',
                    "duration_ms": 120,
                },
                {
                    "execution_id": failed,
                    "step_number": 2,
                    "attempt": 1,
                    "status": "failed",
                    "request": {"message": "do part 2"},
                    "response_status": 503,
                    "error": "HTTP 503 from agent",
                    "duration_ms": 80,
                },
            ],
        )

    # the overview
    page.goto(dashboard_url)
    settle(page)
    page.get_by_text("Success rate, 24 h").wait_for()
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    page.wait_for_timeout(1500)  # vega draws after the element appears
    no_exception(page)
    shoot(page, "overview")

    # when a schedule is created through the dialog
    page.goto(f"{dashboard_url}/schedules")
    settle(page)
    shoot(page, "schedules_empty")
    page.get_by_role("button", name="New schedule").click()
    dialog = page.get_by_role("dialog")
    # Data grids draw on a canvas; their accessible copy is in the DOM, hidden.
    dialog.get_by_text("Next runs (America/New_York)").wait_for(state="attached")
    dialog.get_by_text("At 09:00 AM").wait_for()
    settle(page)
    shoot(page, "schedule_dialog")
    dialog.get_by_role("button", name="Save schedule").click()
    page.get_by_text("Schedule created.").wait_for()
    settle(page)
    no_exception(page)

    # then it is listed with its next run
    with session_scope() as session:
        [row] = queries.list_schedules(session, actor=ADMIN)
    assert row.next_run_at is not None and row.timezone == "America/New_York"
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for()
    next_run = row.next_run_at.astimezone(ZoneInfo(row.timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")
    listed = grid.text_content() or ""
    assert "Browser demo" in listed and next_run in listed, listed[:500]
    shoot(page, "schedules")

    # and an execution's detail opens from a link
    page.goto(f"{dashboard_url}/executions?execution={failed}")
    settle(page)
    page.get_by_text("Step 2 · attempt 1 · failed").wait_for()
    page.get_by_text("Step 2 · attempt 1 · failed").click()
    page.wait_for_timeout(500)
    no_exception(page)
    shoot(page, "executions")

    for name, marker in (
        ("automations", "Steps"),
        ("export", "Build file"),
        ("queues", "Dead letters"),
        ("audit", "Download CSV"),
    ):
        page.goto(f"{dashboard_url}/{name}")
        settle(page)
        # Visible text only: data grids also carry hidden accessible copies of headers.
        page.get_by_text(marker).filter(visible=True).first.wait_for()
        no_exception(page)
        shoot(page, name)
    assert uuid.UUID(str(ok))


HOSTILE = (
    "![x](http://127.0.0.1:9/pixel.png) [Re-authenticate here](http://evil.example/login) "
    "<img src=x onerror=alert(1)> :red[alarm] http://evil.example/raw"
)


def test_hostile_text_renders_literally_and_bad_links_say_not_found(
    dashboard_url: str, browser_page: Any
) -> None:
    # given an automation named with Markdown and HTML, whose run failed with the same text
    page = browser_page
    automation_id = make_automation(name=HOSTILE)
    (failed,) = add_runs(automation_id, [{"status": "failed", "error": HOSTILE}])
    # when its run is opened from a link
    page.goto(f"{dashboard_url}/executions?execution={failed}")
    settle(page)
    page.get_by_text("authenticate here", exact=False).first.wait_for()
    no_exception(page)
    shoot(page, "hostile_text")
    # then no image, link or colour was made from it: the characters show as typed
    main = page.locator('[data-testid="stMain"]')
    assert main.locator("img[src*='pixel'], img[src='x']").count() == 0
    assert main.locator("a[href*='evil.example']").count() == 0
    shown = (main.inner_text() or "").replace("\u2060", "")  # the invisible word joiner
    assert "[Re-authenticate here](http://evil.example/login)" in shown
    # and a link with an id that is not one says "not found", with no traceback
    page.goto(f"{dashboard_url}/executions?execution=not-a-uuid")
    settle(page)
    page.get_by_text("Execution not found").wait_for()
    no_exception(page)
    assert "Traceback" not in page.content()


def test_another_workspaces_run_is_not_found_by_any_page_or_deep_link(
    dashboard_url: str, browser_page: Any
) -> None:
    # given local mode (no login: the local admin, in the default workspace) and another
    # workspace on the same database with a failed run
    page = browser_page
    add_runs(make_automation(name="Our report"), [{"status": "succeeded"}])
    theirs = make_workspace("Their team", admin="eve@their.example")
    their_automation = make_automation(actor=theirs, name="Their payroll")
    (their_run,) = add_runs(their_automation, [{"status": "failed", "error": "their secret"}])
    # when their run is opened by its deep link
    page.goto(f"{dashboard_url}/executions?execution={their_run}")
    settle(page)
    # then it is not found, and nothing of theirs is on the page
    page.get_by_text("Execution not found in this workspace").wait_for()
    no_exception(page)
    for path in ("executions", "automations", "schedules", "export", "overview", "audit"):
        page.goto(f"{dashboard_url}/{path}")
        settle(page)
        no_exception(page)
        content = page.content()
        assert "Their payroll" not in content and "their secret" not in content, path
        assert str(their_run) not in content, path
    # and the local admin, in one workspace, has no workspace chooser and no login screen
    assert page.get_by_role("button", name="Log in").count() == 0
    assert page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').count() == 0


def test_a_page_served_under_a_foreign_host_name_shows_nothing(dashboard_url: str) -> None:
    # given data on the dashboard, and a hostile name that resolves to this machine
    # (what DNS rebinding achieves: Chromium maps the name to 127.0.0.1 itself)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    make_automation(name="Payroll export")
    port = dashboard_url.rsplit(":", 1)[1]
    rules = "--host-resolver-rules=MAP evil.example 127.0.0.1"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, rules]
        )
        page = browser.new_page()
        # when the dashboard is opened under that name
        page.goto(f"http://evil.example:{port}/automations")
        settle(page)
        # then it says so and shows none of the data
        page.get_by_text("does not answer on this address").wait_for()
        assert "Payroll export" not in page.content()
        browser.close()


def test_a_watched_run_that_ends_stays_on_screen(dashboard_url: str, browser_page: Any) -> None:
    # given a running execution opened from the list
    from sqlalchemy import func, update

    from db.models import Execution

    page = browser_page
    automation_id = make_automation(name="Watched run")
    (running,) = add_runs(automation_id, [{"status": "running", "finished_at": None}])
    page.goto(f"{dashboard_url}/executions")
    settle(page)
    page.get_by_text("Open an execution").wait_for()
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Open an execution").click()
    page.get_by_role("option").filter(has_text="Watched run").first.click()
    settle(page)
    page.get_by_text("Steps done").wait_for()
    # when it ends while the page refreshes itself (every 10 s)
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == running)
            .values(status="succeeded", finished_at=func.now())
        )
    page.wait_for_timeout(13_000)
    shoot(page, "watched_run")
    # then its detail is still shown, now finished, with no error
    no_exception(page)
    heading = page.locator("h3").filter(has_text="Watched run").first
    assert "succeeded" in (heading.inner_text() or "")
    # and the chooser names the run by what does not change (no stale "running" in it)
    chooser = page.locator('[data-testid="stSelectbox"]').filter(has_text="Open an execution")
    assert "running" not in (chooser.inner_text() or "")


def test_every_page_at_phone_width(dashboard_url: str) -> None:
    # given some history, and a phone-sized window
    automation_id = make_automation(name="Phone check")
    add_runs(automation_id, [{"status": "succeeded"}, {"status": "failed", "error": "HTTP 503"}])
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(30_000)
        # when each page opens, then it renders without an error (screenshots for a person)
        for name in (
            "overview",
            "schedules",
            "automations",
            "executions",
            "export",
            "queues",
            "audit",
        ):
            page.goto(f"{dashboard_url}/{name}")
            settle(page)
            no_exception(page)
            shoot(page, f"phone_{name}")
        browser.close()
