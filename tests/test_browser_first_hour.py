"""What a new user hit in the first hour, in a real Chromium at 1440 and 390 px: forms that
keep what was typed, next runs that count the queued slot, a cancel that does what it says,
text that is not clipped, a test run's result beside its button. Element boxes are
checked; screenshots go to tests/screenshots/ for a person to look at."""

from __future__ import annotations

from typing import Any

import pytest

from testkit.browser import DESKTOP, PHONE, no_exception, settle, shoot, window

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    settle(page)
    no_exception(page)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_channel_url_typed_then_tabbed_past_is_kept(
    dashboard_url: str, chromium: Any, viewport: dict[str, int]
) -> None:
    with window(chromium, viewport=viewport) as page:
        # given the Workspace page
        open_page(page, f"{dashboard_url}/workspace")
        # when a person types a secret and a channel, pressing Tab after each field, and saves
        page.get_by_label("Name", exact=True).fill("AGENT_TOKEN")
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
            open_page(page, f"{dashboard_url}/execution?id={run}")
            page.get_by_text("Step 1 · attempt 1 · cancelled").wait_for()
            assert page.get_by_text("· failed").count() == 0
            shoot(page, f"first_hour_cancelled_{name}")
