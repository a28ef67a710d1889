"""What a new user hit in the first hour, in a real Chromium at 1440 and 390 px: forms that
keep what was typed, next runs that count the queued slot, a cancel that does what it says,
text that is not clipped, a test run's result beside its button. Element boxes are
checked; screenshots go to tests/screenshots/ for a person to look at."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from testkit.browser import DESKTOP, PHONE, no_exception, settle, shoot, window

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]


def visit(page: Any, url: str, marker: str | None = None) -> None:
    """Open `url` and wait for the script to end, or (a page that redraws itself every few
    seconds on a busy machine may never be still) for `marker` to show."""
    page.goto(url)
    if marker is None:
        settle(page)
    else:
        page.get_by_text(marker).filter(visible=True).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
    no_exception(page)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_channel_url_typed_then_tabbed_past_is_kept(
    dashboard_url: str, chromium: Any, viewport: dict[str, int]
) -> None:
    with window(chromium, viewport=viewport) as page:
        # given the Workspace page
        visit(page, f"{dashboard_url}/workspace")
        # when a person types a secret and a channel, pressing Tab after each field, and saves
        page.get_by_placeholder("AGENT_TOKEN").fill("AGENT_TOKEN")
        page.keyboard.press("Tab")
        page.keyboard.type("s3cret-value")
        page.keyboard.press("Tab")
        settle(page)
        page.get_by_role("button", name="Save secret").click()
        settle(page)
        page.get_by_text("Secret AGENT_TOKEN saved.").wait_for()
        page.get_by_label("Channel name").fill("ops")
        page.keyboard.press("Tab")
        settle(page)
        url = page.get_by_label("Apprise URL")
        url.click()
        page.keyboard.type("json://hooks.example.com/ops")
        page.keyboard.press("Tab")
        settle(page)
        page.get_by_role("button", name="Add channel").click()
        settle(page)
        shoot(page, f"first_hour_channel_{'phone' if viewport is PHONE else 'desktop'}")
        # then both are saved, with no complaint about the URL
        assert page.get_by_text("give an apprise URL").count() == 0
        page.get_by_text("Channel ops added.").wait_for()


def test_a_cancelled_runs_step_is_cut_and_shown_cancelled_not_failed(
    dashboard_url: str, chromium: Any, agent: Any, procs: Any
) -> None:
    from service import executions
    from stepwise.demo_agent import Reply
    from testkit.factories import ADMIN, execution, make_automation, step_runs
    from testkit.pages import execution_page, texts
    from testkit.processes import READY
    from testkit.waiting import wait_for

    # given a real worker running a two-step run whose agent takes 30 s a step (within the
    # step's timeout)
    agent.responder = lambda call: Reply(200, {"output": "ok"}, delay_s=30)
    automation_id = make_automation(
        name="Slow agent", agent_url=agent.url, steps=2, step_timeout_s=60, max_retries=0
    )
    procs.start("worker")
    procs.wait_ready("worker", READY)
    run = executions.run_now(automation_id, actor=ADMIN)
    wait_for(lambda: len(agent.calls_for(str(run))) == 1, timeout=60)
    # when Cancel is pressed on its page while step 1 is at the agent
    at = execution_page(run)
    at.button(key="run_cancel").click().run()
    # then the page says the step was cut, not that it finishes first
    shown = texts(at)
    assert "a step at the agent was cut" in shown and "finishes first" not in shown
    # and the run is cancelled, its step cut before the agent's 30 s were up, none after it
    wait_for(lambda: step_runs(run) and step_runs(run)[0].status != "running", timeout=30)
    assert execution(run).status == "cancelled"
    (step,) = step_runs(run)
    assert (step.step_number, step.status) == (1, "cancelled")
    assert step.started_at is not None and step.finished_at is not None
    assert (step.finished_at - step.started_at).total_seconds() < 30
    assert [c.body.get("step_number") for c in agent.calls_for(str(run))] == [1]
    # and its page shows the step cancelled (grey), nothing failed (red), desktop and phone
    for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        with window(chromium, viewport=viewport) as page:
            visit(page, f"{dashboard_url}/execution?id={run}")
            page.get_by_text("Step 1 · attempt 1 · cancelled").wait_for()
            assert page.get_by_text("· failed").count() == 0
            shoot(page, f"first_hour_cancelled_{name}")


# --- nothing cut off, at 1440 and 390 px ------------------------------------------------

# How wide a data grid's header text is drawn (its canvas: semi-bold 14 px Source Sans,
# 8 px padding a side), for the headers a page declares widths for.
HEADERS_CUT_JS = """
(columns) => {
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = '600 14px "Source Sans", "Source Sans Pro", sans-serif';
  return columns.filter(([text, width]) => ctx.measureText(text).width + 16 > width);
}
"""
# The same for a grid's text cells (regular 14 px): [column, text, width] for each one cut.
CELLS_CUT_JS = HEADERS_CUT_JS.replace("600 14px", "400 14px").replace(
    "([text, width])", "([column, text, width])"
)
# Buttons whose label is wider than the button, and legends (Vega) wider than their chart.
CUT_JS = """
() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const cut = [];
  for (const b of main.querySelectorAll('[data-testid="stBaseButton-secondary"], '
      + '[data-testid="stBaseButton-primary"], [data-testid="stBaseButton-secondaryFormSubmit"]')) {
    const label = b.querySelector('p') || b;
    if (b.offsetParent !== null && label.scrollWidth > label.clientWidth + 1)
      cut.push('button: ' + b.innerText);
  }
  for (const chart of main.querySelectorAll('[data-testid="stVegaLiteChart"]')) {
    const box = chart.getBoundingClientRect();
    for (const label of chart.querySelectorAll('.role-legend-label text')) {
      const r = label.getBoundingClientRect();
      if (r.width && (r.left < box.left - 1 || r.right > box.right + 1))
        cut.push('legend: ' + label.textContent);
    }
  }
  return cut;
}
"""


def declared_widths(view: str, query: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """Every data grid header of a page with the width the page gives its column."""
    import json

    from testkit.pages import open_view

    at = open_view(view, query=query)
    found = []
    for frame in at.dataframe:
        config = json.loads(frame.proto.columns or "{}")
        for name in frame.value.columns:
            width = config.get(str(name), {}).get("width")
            if isinstance(width, int):
                found.append((str(name), width))
    return found


# Columns whose text may end in "…": run ids, and errors (an agent's text, any length, shown
# whole on the run's page).
MAY_BE_CUT = {"Id", "Error"}


def declared_cells(view: str, query: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    """Every text cell of a page's data grids, in a text column it gives a width, with that
    width (a grid draws on a canvas: the cells are read from the script's output)."""
    import json

    from testkit.pages import open_view

    at = open_view(view, query=query)
    found = []
    for frame in at.dataframe:
        config = json.loads(frame.proto.columns or "{}")
        for name in frame.value.columns:
            column = config.get(str(name), {})
            width = column.get("width")
            kind = column.get("type_config", {}).get("type", "text")
            if isinstance(width, int) and kind == "text" and name not in MAY_BE_CUT:
                found += [
                    (str(name), cell, width) for cell in frame.value[name] if isinstance(cell, str)
                ]
    return found


def cut_off(page: Any, headers: list[tuple[str, int]]) -> list[Any]:
    found: list[Any] = page.evaluate(HEADERS_CUT_JS, headers)
    return found + page.evaluate(CUT_JS)


@pytest.fixture
def first_hour() -> dict[str, Any]:
    """A paused schedule with a long note, an active one with a slot queued, failed runs
    with a long error, and an automation with steps."""
    from service import schedules
    from tasks import periodic
    from testkit.factories import (
        ADMIN,
        add_executions,
        add_steps,
        make_automation,
        make_schedule,
        now,
        schedule,
    )

    paused_automation = make_automation(name="Agent maintenance window", steps=3)
    paused = make_schedule(paused_automation, cron_expr="0 3 * * *", timezone="Europe/Berlin")
    schedules.pause(paused, actor=ADMIN, note="Agent maintenance until Monday")
    active_automation = make_automation(name="Minutely sales report", steps=2)
    active = make_schedule(active_automation, cron_expr="* * * * *", timezone="Europe/Berlin")
    slot = schedule(active).next_run_at
    assert slot is not None
    periodic.dispatch_due(lambda message: None, now=slot - timedelta(seconds=17))
    error = "step 2: agent answered HTTP 503: upstream inventory service unavailable, retry later"
    runs = add_executions(
        active_automation,
        [{"status": "failed", "error": error, "total_steps": 2} for _ in range(3)]
        + [{"status": "succeeded", "total_steps": 2}],
    )
    base = now()
    for run in runs:
        add_steps(
            run,
            [
                {
                    "step_number": n,
                    "attempt": 1,
                    "status": "succeeded",
                    "request": {},
                    "started_at": base + timedelta(seconds=n),
                    "finished_at": base + timedelta(seconds=n + 1),
                    "duration_ms": 1000,
                }
                for n in (1, 2)
            ],
        )
    return {
        "paused": paused,
        "active": active,
        "slot": slot,
        "automation_id": active_automation,
    }


def test_the_next_run_is_the_queued_slot_and_nothing_is_cut_off_at_1440(
    dashboard_url: str, chromium: Any, first_hour: dict[str, Any]
) -> None:
    from dashboard import ui

    slot = ui.fmt_time(first_hour["slot"], "Europe/Berlin")
    with window(chromium, viewport=DESKTOP, timezone_id="Europe/Berlin") as page:
        # the schedule pages: the queued slot is the next run; a paused one says paused
        visit(page, f"{dashboard_url}/schedule?id={first_hour['active']}", "Next run")
        shoot(page, "first_hour_active_schedule_desktop")
        assert page.get_by_text(f"Next run {slot}").count() == 1
        visit(page, f"{dashboard_url}/schedule?id={first_hour['paused']}", "Next run paused")
        shoot(page, "first_hour_paused_schedule_desktop")
        # Schedules, Overview, Executions, Automations: no header, button or legend cut off
        for view, query, marker in (
            ("schedules", None, "New schedule"),
            ("overview", None, "Needs attention"),
            ("executions", None, "Finished"),
            ("automations", None, "Save"),
        ):
            headers = declared_widths(view, query)
            cells = declared_cells(view, query)
            visit(page, f"{dashboard_url}/{'' if view == 'overview' else view}", marker)
            shoot(page, f"first_hour_{view}_desktop")
            assert cut_off(page, headers) == [], view
            # and no cell's text cut with "…": names, timings, notes, errors up to their width
            assert page.evaluate(CELLS_CUT_JS, cells) == [], view
            grids = page.locator('[data-testid="stDataFrame"]').all()
            if view in ("schedules", "overview"):  # every column on screen
                for grid in grids:
                    assert grid.evaluate(
                        "el => { const s = el.querySelector('.dvn-scroller');"
                        " return !s || s.scrollWidth <= s.clientWidth + 1; }"
                    ), view
            if view == "executions":  # up to Duration on screen; the ids may scroll
                shown = dict(headers)
                upto = ["Status", "Automation", "Steps", "Error", "Queued", "Duration"]
                width = grids[-1].evaluate("el => el.clientWidth")
                assert sum(shown[c] for c in upto) + 2 <= width, width
    # and on a phone the Schedules page stays within the screen (its grid scrolls sideways),
    # the pause note in full under it
    with window(chromium, viewport=PHONE, timezone_id="Europe/Berlin") as page:
        visit(page, f"{dashboard_url}/schedules", "New schedule")
        shoot(page, "first_hour_schedules_phone")
        note = page.get_by_text("paused: Agent maintenance until Monday").bounding_box()
        assert note and note["x"] + note["width"] <= PHONE["width"], note
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_run_page_and_grid_legends_fit_a_phone(
    dashboard_url: str, chromium: Any, first_hour: dict[str, Any]
) -> None:
    from db import queries
    from db.session import session_scope
    from testkit.factories import ADMIN

    with session_scope() as session:
        run = queries.list_executions(
            session,
            queries.ExecutionFilters(automation_id=first_hour["automation_id"]),
            actor=ADMIN,
        ).rows[0]
    with window(chromium, viewport=PHONE) as page:
        visit(page, f"{dashboard_url}/execution?id={run.id}")
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
        page.wait_for_timeout(1000)
        shoot(page, "first_hour_run_phone")
        assert cut_off(page, []) == []
        visit(page, f"{dashboard_url}/executions?automation={first_hour['automation_id']}")
        page.get_by_text("Execution grid").wait_for()
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
        page.wait_for_timeout(1000)
        shoot(page, "first_hour_grid_phone")
        assert cut_off(page, []) == []


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_test_runs_result_shows_under_its_button(
    dashboard_url: str, chromium: Any, viewport: dict[str, int]
) -> None:
    from testkit.factories import make_automation

    # given an automation chosen on the Automations page (no worker: the run stays queued)
    make_automation(name="Tried by hand")
    name = "phone" if viewport is PHONE else "desktop"
    with window(chromium, viewport=viewport) as page:
        visit(page, f"{dashboard_url}/automations")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Automation").first.click(
            timeout=120_000
        )
        page.get_by_role("option", name="Tried by hand").click(timeout=120_000)
        page.get_by_role("button", name="Test run", exact=True).wait_for(timeout=120_000)
        page.wait_for_timeout(2000)
        # when Test run is pressed
        page.get_by_role("button", name="Test run", exact=True).click()
        page.get_by_text("Still running").wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        shoot(page, f"first_hour_test_run_{name}")
        # then its result sits right under the button, above Notifications and Webhook
        below = page.get_by_role("button", name="Test run", exact=True).bounding_box()
        shown = page.get_by_text("Still running").bounding_box()
        notifications = page.get_by_text("Notifications", exact=True).first.bounding_box()
        assert below and shown and notifications
        assert below["y"] < shown["y"] < notifications["y"], (below, shown, notifications)
