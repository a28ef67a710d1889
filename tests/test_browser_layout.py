"""The dashboard's layout in a real Chromium: nothing overlaps or runs off a phone's
screen (element boxes checked), the first row of a list shows early, and the overview's
lists refresh themselves. Screenshots go to tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from testkit.browser import DESKTOP, PHONE, no_exception, settle, shoot
from testkit.factories import ADMIN, add_executions, make_automation, make_schedule, now

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]

# Headings, widgets, tables and their toolbars: what a person reads or touches.
BOXES_JS = """
() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const pick = 'h1, h2, h3, [data-testid="stElementToolbar"], [data-testid="stDataFrame"], '
    + '[data-testid="stExpander"] summary, [data-testid="stSelectbox"], '
    + '[data-testid="stMultiSelect"], [data-testid="stButton"], [data-testid="stMetric"], '
    + '[data-testid="stVegaLiteChart"], [data-testid="stCaptionContainer"]';
  return [...main.querySelectorAll(pick)]
    .filter(e => e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden'
                 && getComputedStyle(e).opacity !== '0')
    .map(e => {
      // A heading by its text, not its padding (the space below it is meant to be free).
      let r = e.getBoundingClientRect();
      if (/^H[1-3]$/.test(e.tagName)) {
        const range = document.createRange();
        range.selectNodeContents(e);
        r = range.getBoundingClientRect();
      }
      return {kind: e.getAttribute('data-testid') || e.tagName.toLowerCase(),
              text: (e.innerText || '').slice(0, 40),
              x: r.left, y: r.top + window.scrollY, w: r.width, h: r.height};
    })
    .filter(b => b.w > 0 && b.h > 0);
}
"""


def boxes(page: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate(BOXES_JS)
    return found


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] - 1
        and b["x"] < a["x"] + a["w"] - 1
        and a["y"] < b["y"] + b["h"] - 1
        and b["y"] < a["y"] + a["h"] - 1
    )


def check_layout(page: Any, width: int) -> list[dict[str, Any]]:
    """Every box within the viewport's width, and no heading overlapping a toolbar or a table."""
    found = boxes(page)
    outside = [b for b in found if b["x"] < -1 or b["x"] + b["w"] > width + 1]
    assert not outside, outside
    headings = [b for b in found if b["kind"] in ("h1", "h2", "h3")]
    others = [b for b in found if b["kind"] in ("stElementToolbar", "stDataFrame")]
    clashes = [(h, o) for h in headings for o in others if overlaps(h, o)]
    assert not clashes, clashes
    return found


def show_toolbars(page: Any) -> None:
    """Hover every table so that its toolbar shows (as a touch shows it on a phone)."""
    tables = page.locator('[data-testid="stDataFrame"]')
    for n in range(tables.count()):
        table = tables.nth(n)
        if table.is_visible():
            table.hover()
            page.wait_for_timeout(300)
            check = boxes(page)
            toolbars = [b for b in check if b["kind"] == "stElementToolbar"]
            headings = [b for b in check if b["kind"] in ("h1", "h2", "h3")]
            clashes = [(h, t) for h in headings for t in toolbars if overlaps(h, t)]
            assert not clashes, clashes


@pytest.fixture
def history() -> dict[str, Any]:
    automation_id = make_automation(name="Phone check", steps=3)
    make_schedule(automation_id)
    runs = add_executions(
        automation_id,
        [
            {"status": "succeeded"},
            {"status": "failed", "error": "step 2: agent answered HTTP 503"},
            {"status": "failed", "error": "step 2: agent answered HTTP 503"},
        ],
    )
    return {"automation_id": automation_id, "runs": runs}


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    settle(page)
    no_exception(page)


def test_phone_pages_keep_within_the_screen_and_show_rows_early(
    dashboard_url: str, browser_page: Any, history: dict[str, Any]
) -> None:
    page = browser_page
    page.set_viewport_size(PHONE)
    # Executions: the filters fold away, so the first row shows on the first screen
    open_page(page, f"{dashboard_url}/executions")
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    found = check_layout(page, PHONE["width"])
    first_table = min(b["y"] for b in found if b["kind"] == "stDataFrame")
    assert first_table < PHONE["height"] - 120, first_table
    show_toolbars(page)
    shoot(page, "layout_phone_executions")
    # Queues: the depths are one small table, the workers and dead letters follow soon
    open_page(page, f"{dashboard_url}/queues")
    page.get_by_role("heading", name="Dead letters").first.wait_for()
    settle(page)
    found = check_layout(page, PHONE["width"])
    dead = next(b for b in found if b["kind"] in ("h2", "h3") and "Dead letters" in b["text"])
    assert dead["y"] < PHONE["height"], dead
    show_toolbars(page)
    shoot(page, "layout_phone_queues")
    # Overview and Export: within the screen, no heading under a toolbar
    for name, marker in (("", "Needs attention"), ("export", "Build file")):
        open_page(page, f"{dashboard_url}/{name}")
        page.get_by_text(marker).filter(visible=True).first.wait_for()
        page.wait_for_timeout(1000)
        check_layout(page, PHONE["width"])
        show_toolbars(page)
        shoot(page, f"layout_phone_{name or 'overview'}")
    # Automations: the step editor fits the screen (its columns' widths put the message
    # column's start on screen: test_dashboard checks them)
    open_page(page, f"{dashboard_url}/automations")
    page.get_by_text("Add rows at the bottom").wait_for()
    editor = page.locator('[data-testid="stDataFrame"]').nth(1)
    editor.wait_for()
    editor.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    check_layout(page, PHONE["width"])
    shoot(page, "layout_phone_automations")


def test_desktop_pages_keep_headings_clear_of_toolbars(
    dashboard_url: str, browser_page: Any, history: dict[str, Any]
) -> None:
    page = browser_page
    page.set_viewport_size(DESKTOP)
    for name, marker in (
        ("", "Needs attention"),
        ("executions", "Finished"),
        ("queues", "Dead letters"),
    ):
        open_page(page, f"{dashboard_url}/{name}")
        page.get_by_text(marker).filter(visible=True).first.wait_for()
        page.wait_for_timeout(1000)
        check_layout(page, DESKTOP["width"])
        show_toolbars(page)
        shoot(page, f"layout_desktop_{name or 'overview'}")


def test_needs_attention_refreshes_by_itself(
    dashboard_url: str, browser_page: Any, history: dict[str, Any]
) -> None:
    # given the overview open, listing today's failures
    page = browser_page
    open_page(page, dashboard_url)
    page.get_by_text("Needs attention").wait_for()
    # when another automation fails while the page stays open
    other = make_automation(name="Late failure")
    add_executions(
        other, [{"status": "failed", "error": "step 1: timed out", "finished_at": now()}]
    )
    # then it appears without a reload (the grid's accessible copy is in the DOM)
    page.get_by_text("Late failure").first.wait_for(state="attached", timeout=40_000)
    no_exception(page)


def test_a_one_off_schedules_preview_has_no_blank_rows(
    dashboard_url: str, browser_page: Any
) -> None:
    # given a one-off schedule
    automation_id = make_automation(name="Once only")
    schedule_id = make_schedule(automation_id, kind="once", run_at=now() + timedelta(days=2))
    page = browser_page
    page.set_viewport_size(DESKTOP)
    open_page(page, f"{dashboard_url}/schedule?id={schedule_id}")
    # when its edit dialog opens (from the schedule's page)
    page.get_by_role("button", name="Edit").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Editing a schedule of").wait_for()
    settle(page)
    # then its preview table is one row high (a header and one run), not ten
    preview = dialog.locator('[data-testid="stDataFrame"]').first
    box = preview.bounding_box()
    assert box is not None and box["height"] < 3 * 35 + 10, box
    shoot(page, "layout_once_dialog")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_signing_secret_rotation_asks_first_and_dead_letters_clean_in_bulk(
    dashboard_url: str, browser_page: Any, redis_client: Any, size: dict[str, int]
) -> None:
    import time

    from tasks.actors import run_execution

    page = browser_page
    page.set_viewport_size(size)
    kind = "desktop" if size == DESKTOP else "phone"
    # given an automation with a failed run whose message was dead-lettered
    automation_id = make_automation(name="Signed report")
    (failed,) = add_executions(
        automation_id, [{"status": "failed", "error": "step 1: agent answered HTTP 401"}]
    )
    redis_client.zadd("dramatiq:default.XQ", {"dead-1": time.time() * 1000})
    redis_client.hset(
        "dramatiq:default.XQ.msgs", "dead-1", run_execution.message(str(failed)).encode()
    )
    # when "New signing secret" is pressed, then it asks first, within the screen
    open_page(page, f"{dashboard_url}/automations")
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name="Signed report").click()
    settle(page)
    page.get_by_role("button", name="New signing secret").click()
    settle(page)
    page.get_by_text("Make a new signing secret for").wait_for()
    page.get_by_role("button", name="Yes, make a new secret").scroll_into_view_if_needed()
    check_layout(page, size["width"])
    shoot(page, f"rotate_confirm_{kind}")
    # and the Queues page lists the run's dead letter with its error, and the clean controls
    open_page(page, f"{dashboard_url}/queues")
    page.get_by_text("whose run is now").first.wait_for()
    page.get_by_role("button", name="Clean dead letters").click()
    settle(page)
    page.get_by_text("Delete the 1 dead letter(s)").wait_for()
    check_layout(page, size["width"])
    shoot(page, f"dead_letters_clean_{kind}")


def test_the_workspace_pages_secrets_and_their_origins_fit_phone_and_desktop(
    dashboard_url: str, browser_page: Any
) -> None:
    from service import secrets

    # given a secret bound to two agent origins
    origins = ["https://agent.example.com", "http://127.0.0.1:8787"]
    secrets.set_secret("AGENT_TOKEN", "s3cret-value", actor=ADMIN, origins=origins)
    page = browser_page
    for size, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        # when the Workspace page opens, then the origins show and nothing overlaps
        page.set_viewport_size(size)
        page.goto(f"{dashboard_url}/workspace")
        page.get_by_text("May be sent to (agent origins").first.wait_for(timeout=120_000)
        settle(page)
        page.wait_for_timeout(1000)
        check_layout(page, size["width"])
        page.get_by_text("Now sent only to").first.scroll_into_view_if_needed()
        shoot(page, f"layout_{label}_workspace_secrets")
        assert "s3cret-value" not in page.content()
