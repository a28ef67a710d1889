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
