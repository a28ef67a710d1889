"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

Drives the Procfile's `web` (the `dashboard_url` fixture) on the test database, creates a
schedule through the dialog, sees it listed with its next run, opens an
execution's step timeline, and saves a screenshot of every page to
tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

import uuid
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from sqlalchemy import insert

from db import queries
from db.models import StepRun
from db.session import session_scope
from service import executions
from stepwise.demo_agent import Reply
from stepwise.embedded import free_port
from testkit.api import ApiProcess
from testkit.browser import (
    DESKTOP,
    PHONE,
    framing_page,
    launch,
    no_exception,
    outside_requests,
    settle,
    shoot,
    window,
)
from testkit.factories import ADMIN, add_executions, make_automation, make_schedule, make_workspace
from testkit.processes import READY, Processes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]


def test_dashboard_in_a_real_browser(dashboard_url: str, browser_page: Any) -> None:
    # given an automation with a finished run that has a step timeline
    page = browser_page
    auto = make_automation(name="Browser demo", steps=2)
    ok, failed = add_executions(
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
    # The table gives the next run in the viewer's zone (the browser's: America/New_York).
    viewer = ZoneInfo("America/New_York")
    next_run = row.next_run_at.astimezone(viewer).strftime("%b %d, %H:%M %Z")
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
    (failed,) = add_executions(automation_id, [{"status": "failed", "error": HOSTILE}])
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
    page.get_by_text("Execution not found").first.wait_for()
    no_exception(page)
    assert "Traceback" not in page.content()


def test_another_workspaces_run_is_not_found_by_any_page_or_deep_link(
    dashboard_url: str, browser_page: Any
) -> None:
    # given local mode (no login: the local admin, in the default workspace) and another
    # workspace on the same database with a failed run
    page = browser_page
    add_executions(make_automation(name="Our report"), [{"status": "succeeded"}])
    theirs = make_workspace("Their team", admin="eve@their.example")
    their_automation = make_automation(actor=theirs, name="Their payroll")
    (their_run,) = add_executions(their_automation, [{"status": "failed", "error": "their secret"}])
    # when their run is opened by its deep link
    page.goto(f"{dashboard_url}/executions?execution={their_run}")
    settle(page)
    # then it is not found, and nothing of theirs is on the page
    page.get_by_text("Execution not found in this workspace").wait_for()
    no_exception(page)
    for path in ("executions", "automations", "schedules", "export", "", "audit"):
        page.goto(f"{dashboard_url}/{path}")
        settle(page)
        no_exception(page)
        content = page.content()
        assert "Their payroll" not in content and "their secret" not in content, path
        assert str(their_run) not in content, path
    # and the local admin, in one workspace, has no workspace chooser and no login screen
    assert page.get_by_role("button", name="Log in").count() == 0
    assert page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').count() == 0


def test_a_page_served_under_a_foreign_host_name_shows_nothing(
    dashboard_url: str, playwright: Any
) -> None:
    # given data on the dashboard, and a hostile name that resolves to this machine
    # (what DNS rebinding achieves: Chromium maps the name to 127.0.0.1 itself)
    make_automation(name="Payroll export")
    port = dashboard_url.rsplit(":", 1)[1]
    rules = "--host-resolver-rules=MAP evil.example 127.0.0.1"
    with launch(playwright, rules) as browser:
        page = browser.new_page()
        # when the dashboard is opened under that name
        page.goto(f"http://evil.example:{port}/automations")
        # then it says so and shows none of the data
        page.get_by_text("does not answer on this address").wait_for()
        assert "Payroll export" not in page.content()
    # and no Streamlit endpoint answers under that name either
    for path in ("/_stcore/health", "/_stcore/host-config", "/automations"):
        foreign = httpx.get(f"{dashboard_url}{path}", headers={"Host": f"evil.example:{port}"})
        assert foreign.status_code == 421, path
        assert "does not answer on this address" in foreign.text
    assert httpx.get(f"{dashboard_url}/_stcore/health").status_code == 200


def test_another_site_cannot_frame_the_dashboard_or_the_api_docs(
    dashboard_url: str, api_process: ApiProcess, chromium: Any
) -> None:
    # given a page on another origin that frames the Workspace page and the API docs
    framed = (f"{dashboard_url}/workspace", f"{api_process.url}/docs")
    with framing_page(*framed) as elsewhere, window(chromium) as page:
        # when a person opens it
        page.goto(elsewhere)
        dashboard, docs = page.frames[1:]
        # then the browser renders neither inside it
        with pytest.raises(PlaywrightTimeout):
            dashboard.locator('[data-testid="stApp"]').wait_for(state="attached", timeout=10_000)
        with pytest.raises(PlaywrightTimeout):
            docs.locator("#swagger-ui").wait_for(state="attached", timeout=2_000)
        shoot(page, "framed_elsewhere")
    # though both open on their own
    with window(chromium) as page:
        page.goto(f"{dashboard_url}/workspace")
        page.locator('[data-testid="stApp"]').wait_for()
        page.goto(f"{api_process.url}/docs")
        page.locator("#swagger-ui").wait_for(state="attached")


def test_the_dashboard_started_anywhere_shows_no_traceback(procs: Processes, chromium: Any) -> None:
    # given `stepwise web` started outside the project (no .streamlit/ there), missing a
    # setting, so that every page fails
    port = free_port()
    procs.start(
        "web",
        command="cd / && stepwise web",
        PORT=str(port),
        REDIS_URL="",  # a configuration error, raised on the page's first read
    )
    url = f"http://127.0.0.1:{port}"
    procs.wait_http("web", f"{url}/_stcore/health")
    with window(chromium) as page:
        # when a person opens it
        page.goto(f"{url}/automations")
        # then the error is a generic message: no traceback, no database address
        page.locator('[data-testid="stException"]').first.wait_for()
        settle(page)
        shown = page.locator('[data-testid="stMain"]').inner_text()
        assert "redacted" in shown
        for leak in ("Traceback", "ConfigError", "REDIS_URL", "settings.py", "/work/"):
            assert leak not in page.content(), leak
        # and no developer menu: only the viewer's toolbar
        assert page.locator('[data-testid="stAppDeployButton"]').count() == 0


def test_every_page_at_phone_width(dashboard_url: str, chromium: Any) -> None:
    # given some history, and a phone-sized window
    automation_id = make_automation(name="Phone check")
    _, failed = add_executions(
        automation_id,
        [{"status": "succeeded"}, {"status": "failed", "error": "HTTP 503", "trace_id": "ab" * 16}],
    )
    with window(chromium, viewport=PHONE) as page:
        # when each page opens, then it renders without an error (screenshots for a person)
        for path, name in (
            (f"execution?id={failed}", "execution"),
            ("", "overview"),  # the default page's address is the root
            ("schedules", "schedules"),
            ("automations", "automations"),
            ("executions", "executions"),
            ("export", "export"),
            ("queues", "queues"),
            ("audit", "audit"),
        ):
            page.goto(f"{dashboard_url}/{path}")
            settle(page)
            no_exception(page)
            shoot(page, f"phone_{name}")


# --- the run page -------------------------------------------------------------------------


def header(page: Any) -> str:
    return page.locator('[data-testid="stMain"] h2').first.inner_text()


def wait_status(page: Any, status: str, timeout_s: float = 60) -> None:
    """Wait until the run page's header shows `status` (it refreshes itself)."""
    page.locator('[data-testid="stMain"] h2').filter(has_text=status).first.wait_for(
        timeout=timeout_s * 1000
    )


def test_a_run_is_watched_live_on_its_page(
    dashboard_url: str, browser_page: Any, agent: Any, procs: Any
) -> None:
    # given a three-step automation whose agent takes 1.5 s a step, run now, no worker yet
    page = browser_page
    outside = outside_requests(page)
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=1.5)
    automation_id = make_automation(name="Live run", agent_url=agent.url, steps=3)
    run = executions.run_now(automation_id, actor=ADMIN)
    # when its page is opened by its first URL (/run, which sends it on to /execution)
    page.goto(f"{dashboard_url}/run?id={run}")
    settle(page)
    wait_status(page, "queued")
    no_exception(page)
    # and a worker picks it up
    procs.start("worker")
    procs.wait_ready("worker", READY)
    # then the page shows it running, a step in flight on the waterfall
    wait_status(page, "running")
    page.get_by_text("of 3 running").first.wait_for(timeout=30_000)
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    no_exception(page)
    shoot(page, "run_live")
    # and then succeeded, with every step listed and no error on the way
    wait_status(page, "succeeded")
    page.get_by_text("Step 3 · attempt 1 · succeeded").wait_for()
    no_exception(page)
    assert "Traceback" not in page.content()
    page.get_by_text("Step 3 · attempt 1 · succeeded").click()
    shoot(page, "run_succeeded")
    page.set_viewport_size(PHONE)
    shoot(page, "phone_run_succeeded")
    # and nothing was fetched from anywhere but this machine
    assert outside == []


def test_a_failed_run_is_retried_from_its_page(
    dashboard_url: str, browser_page: Any, agent: Any, procs: Any
) -> None:
    # given a run whose step 2 fails on every attempt (one retry), watched on its page
    page = browser_page
    outside = outside_requests(page)
    failing = {"on": True}

    def reply(call: Any) -> Reply:
        if failing["on"] and call.body.get("step_number") == 2:
            return Reply(503, {"error": "agent is down"}, delay_s=0.3)
        return Reply(200, {"output": "ok"}, delay_s=0.3)

    agent.responder = reply
    automation_id = make_automation(name="Flaky run", agent_url=agent.url, steps=2, max_retries=1)
    procs.start("worker")
    procs.wait_ready("worker", READY)
    run = executions.run_now(automation_id, actor=ADMIN)
    page.goto(f"{dashboard_url}/execution?id={run}")
    settle(page)
    wait_status(page, "failed")
    page.get_by_text("Step 2 · attempt 2 · failed").wait_for()
    no_exception(page)
    shoot(page, "run_failed")
    # when the agent is back and Retry is pressed
    failing["on"] = False
    page.get_by_role("button", name="Retry").click()
    # then the same page follows it to success, without an error
    page.get_by_text("Retry queued").wait_for()
    wait_status(page, "succeeded")
    no_exception(page)
    assert "Traceback" not in page.content()
    shoot(page, "run_retried")
    assert outside == []


def test_a_click_on_an_executions_row_opens_the_run_page(
    dashboard_url: str, browser_page: Any
) -> None:
    # given two finished runs listed on Executions
    page = browser_page
    outside = outside_requests(page)
    automation_id = make_automation(name="Clicked run")
    newer, older = add_executions(
        automation_id, [{"status": "failed", "error": "HTTP 500"}, {"status": "succeeded"}]
    )
    with session_scope() as session:
        rows = queries.list_executions(session, queries.ExecutionFilters(), actor=ADMIN).rows
    page.goto(f"{dashboard_url}/executions")
    settle(page)
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for()
    page.wait_for_timeout(1500)
    shoot(page, "executions_table")
    # when the first row's selector is clicked (the grid draws on a canvas: by position)
    box = grid.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)
    # then the run page of that row opens, at its own URL
    page.wait_for_url(f"**/execution?id={rows[0].id}")
    settle(page)
    wait_status(page, rows[0].status)
    no_exception(page)
    assert {newer, older} == {r.id for r in rows}
    assert outside == []


def test_a_click_on_a_run_grid_cell_opens_the_run_page(
    dashboard_url: str, browser_page: Any
) -> None:
    # given an automation with a failed and a succeeded run, chosen by a shareable link
    page = browser_page
    outside = outside_requests(page)
    automation_id = make_automation(name="Grid run", steps=2)
    failed, ok = add_executions(automation_id, [{"status": "failed", "error": "HTTP 500"}, {}])
    page.goto(f"{dashboard_url}/executions?automation={automation_id}")
    settle(page)
    page.get_by_text("Execution grid").wait_for()
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for()
    page.wait_for_timeout(2000)
    no_exception(page)
    shoot(page, "run_grid")
    # when a cell of the failed run is clicked
    # (Vega draws SVG marks labelled with their fields, the run id among them)
    chart.locator(f"svg [aria-label*='{failed}']").first.click()
    # then that run's page opens at its own URL
    page.wait_for_url(f"**/execution?id={failed}", timeout=20_000)
    settle(page)
    wait_status(page, "failed")
    no_exception(page)
    assert ok != failed and outside == []


# --- the schedule page ------------------------------------------------------------------


def grid_fits(page: Any, grid: Any) -> bool:
    """Whether a data grid shows every column without scrolling sideways."""
    return bool(
        grid.evaluate(
            "el => { const s = el.querySelector('.dvn-scroller');"
            " return !!s && s.scrollWidth <= s.clientWidth + 1; }"
        )
    )


def test_a_schedules_row_opens_its_page_and_every_column_fits_at_1440(
    dashboard_url: str, browser_page: Any
) -> None:
    # given a schedule with a run, on a 1440 x 900 screen
    page = browser_page
    page.set_viewport_size(DESKTOP)
    outside = outside_requests(page)
    automation_id = make_automation(name="Row click")
    schedule_id = make_schedule(automation_id, cron_expr="0 9 * * 1-5", timezone="Europe/Berlin")
    add_executions(automation_id, [{"schedule_id": schedule_id, "trigger": "schedule"}])
    page.goto(f"{dashboard_url}/schedules")
    settle(page)
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.wait_for()
    page.wait_for_timeout(1500)
    shoot(page, "schedules_1440")
    # then every column, the record's included, is on screen (defect 8)
    for name in ("Last", "Runs", "Success", "Missed / skipped", "Queued"):
        assert name in (grid.text_content() or ""), name
    assert grid_fits(page, grid)
    # when its row is ticked, then the actions on selected rows show
    box = grid.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)  # the canvas grid: by position
    page.get_by_text("1 selected").wait_for()
    page.get_by_label("Pause note (optional)").wait_for()
    settle(page)
    shoot(page, "schedules_selected")
    # when the schedule's row is clicked
    page.mouse.click(box["x"] + 100, box["y"] + 35 + 17)
    # then its page opens at its own URL, with its timing in words
    page.wait_for_url(f"**/schedule?id={schedule_id}")
    settle(page)
    page.get_by_text("At 09:00 AM, Monday through Friday (Europe/Berlin)").wait_for()
    no_exception(page)
    shoot(page, "schedule_page")
    # and the way back lists the schedules again (the click is not replayed)
    page.get_by_role("link", name="All schedules").click()
    page.wait_for_url("**/schedules")
    settle(page)
    page.wait_for_timeout(1500)
    assert page.url.endswith("/schedules"), page.url
    page.goto(f"{dashboard_url}/schedule?id={schedule_id}")
    settle(page)
    page.set_viewport_size(PHONE)
    settle(page)
    shoot(page, "phone_schedule_page")
    page.goto(f"{dashboard_url}/schedules")
    settle(page)
    shoot(page, "phone_schedules")
    no_exception(page)
    assert outside == []


def test_pause_with_a_note_and_backfill_on_a_schedule_page_opened_by_url(
    dashboard_url: str, browser_page: Any
) -> None:
    # given an hourly schedule, its page opened by its URL
    page = browser_page
    outside = outside_requests(page)
    automation_id = make_automation(name="Backfilled report")
    schedule_id = make_schedule(automation_id, cron_expr="0 * * * *", timezone="UTC")
    page.goto(f"{dashboard_url}/schedule?id={schedule_id}")
    settle(page)
    # when yesterday (the form's default range) is previewed, then backfilled
    page.get_by_text("This range holds 24 slot(s); 0 already have a run").wait_for()
    page.get_by_role("button", name="Backfill 24 run(s)").click()
    page.get_by_text("Backfill: 24 run(s) queued; 0 slot(s) already had their run.").wait_for()
    settle(page)
    # then the runs are listed on the page, and the same range would make none
    page.get_by_text("24 already have a run, so 0 run(s) will be made").wait_for()
    recent = page.locator('[data-testid="stDataFrame"]').nth(1)
    listed = recent.text_content() or ""
    assert listed.count("backfill") >= 5 and listed.count("queued") >= 5, listed[:300]
    with session_scope() as session:
        page_of_runs = queries.list_executions(
            session, queries.ExecutionFilters(schedule_id=schedule_id), actor=ADMIN
        )
    assert len(page_of_runs.rows) == 24
    assert {r.trigger for r in page_of_runs.rows} == {"backfill"}
    shoot(page, "schedule_backfilled")
    # when paused with a note
    page.get_by_label("Pause note (optional)").fill("Vendor API down until <b>Monday</b>")
    page.get_by_role("button", name="Pause").click()
    page.get_by_text("Schedule paused").wait_for()
    settle(page)
    # then the note shows, as typed, with who paused it
    page.get_by_text("Paused by local admin").wait_for()
    assert (
        "Vendor API down until <b>Monday</b>" in page.locator('[data-testid="stMain"]').inner_text()
    )
    no_exception(page)
    shoot(page, "schedule_paused")
    # and the schedules table shows it too
    page.goto(f"{dashboard_url}/schedules")
    settle(page)
    page.locator('[data-testid="stDataFrame"]').first.get_by_text("paused").first.wait_for(
        state="attached"
    )
    page.get_by_text("paused: Vendor API down until <b>Monday</b>").wait_for()
    shoot(page, "schedules_paused")
    assert outside == []


def test_another_workspaces_schedule_page_is_not_found(
    dashboard_url: str, browser_page: Any
) -> None:
    page = browser_page
    theirs = make_workspace("Their team", admin="eve@their.example")
    their_schedule = make_schedule(
        make_automation(actor=theirs, name="Their payroll"), actor=theirs
    )
    page.goto(f"{dashboard_url}/schedule?id={their_schedule}")
    settle(page)
    page.get_by_text("Schedule not found in this workspace").wait_for()
    no_exception(page)
    assert "Their payroll" not in page.content()


def test_the_failed_runs_of_a_filter_are_retried_in_bulk(
    dashboard_url: str, browser_page: Any
) -> None:
    # given two failed runs and a succeeded one, Executions filtered to failed by its URL
    page = browser_page
    outside = outside_requests(page)
    automation_id = make_automation(name="Bulk retried")
    failed = add_executions(automation_id, [{"status": "failed", "error": "HTTP 503"}] * 2)
    add_executions(automation_id, [{"status": "succeeded"}])
    page.goto(f"{dashboard_url}/executions?status=failed")
    settle(page)
    # when "Retry the failed runs of this filter" is pressed and confirmed
    page.get_by_role("button", name="Retry the failed runs of this filter (2)").click()
    page.get_by_text("Retry 2 failed run(s)?").wait_for()
    shoot(page, "executions_bulk_retry")
    page.get_by_role("button", name="Yes, retry 2").click()
    # then both are queued again
    page.get_by_text("2 failed run(s) queued again.").wait_for()
    no_exception(page)
    with session_scope() as session:
        statuses = {
            queries.execution_detail(session, run, actor=ADMIN).execution.status  # type: ignore[union-attr]
            for run in failed
        }
    assert statuses == {"queued"}
    assert outside == []
