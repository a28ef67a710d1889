"""The automation page's graph in a real Chromium, at desktop and phone widths: drawn (an SVG
with a node per step and an edge per need), within the screen, its texts as typed.
Screenshots go to tests/screenshots/ for a person to look at."""

from __future__ import annotations

from typing import Any

import pytest

from core.automation import steps_of
from testkit.browser import DESKTOP, PHONE, SHOTS, no_exception, settle, shoot, window
from testkit.factories import make_automation

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]

STEPS = [
    {"key": "plan", "name": "Plan the research", "message": "List sources on {{ input.topic }}"},
    {
        "key": "read",
        "name": "Read each source",
        "message": "Summarise {{ item }}",
        "needs": ["plan"],
        "for_each": "steps.plan.output.sources",
    },
    {
        "key": "check",
        "name": "Check the plan <b>now</b>",
        "message": "Check {{ steps.plan.output }}",
        "needs": ["plan"],
        "when": "input.strict",
    },
    {
        "key": "brief",
        "name": "Write the brief",
        "message": "Write {{ steps.read.output }}",
        "needs": ["read"],
        "optional_needs": ["check"],
    },
]

GRAPH_JS = """
() => {
  const chart = document.querySelector('[data-testid="stGraphVizChart"] svg');
  if (!chart) return null;
  const r = chart.getBoundingClientRect();
  return {x: r.left, w: r.width, h: r.height,
          nodes: chart.querySelectorAll('g.node').length,
          edges: chart.querySelectorAll('g.edge').length,
          dashed: [...chart.querySelectorAll('g.edge path')]
                    .filter(p => (p.getAttribute('stroke-dasharray') || '') !== '').length,
          text: [...chart.querySelectorAll('text')].map(t => t.textContent).join('|')};
}
"""


@pytest.mark.parametrize(("size", "kind"), [(DESKTOP, "desktop"), (PHONE, "phone")])
def test_the_graph_view_draws_every_step_and_need_within_the_screen(
    dashboard_url: str, chromium: Any, size: dict[str, int], kind: str
) -> None:
    # given a graph: a root, a fan-out beside a condition, and a join
    make_automation(name="Research brief", steps=steps_of(STEPS))
    with window(chromium, viewport=size) as page:
        # when its automation is chosen on the Automations page
        page.goto(f"{dashboard_url}/automations")
        settle(page)
        page.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name="Research brief").click()
        settle(page)
        page.wait_for_selector('[data-testid="stGraphVizChart"] svg g.node')
        no_exception(page)
        drawn = page.evaluate(GRAPH_JS)
        # then every step is a node and every need an edge, the optional one dashed
        assert drawn["nodes"] == 4 and drawn["edges"] == 4 and drawn["dashed"] == 1, drawn
        # and the texts are as typed (a tag in a name is text, not markup)
        for text in ("Plan the research", "Check the plan <b>now</b>", "if input.strict"):
            assert text in drawn["text"], drawn["text"]
        assert "for each in|steps.plan.output.sources" in drawn["text"]
        # and the drawing stays within the screen
        assert drawn["x"] >= 0 and drawn["x"] + drawn["w"] <= size["width"], drawn
        chart = page.locator('[data-testid="stGraphVizChart"]')
        chart.scroll_into_view_if_needed()
        shoot(page, f"graph_view_{kind}")
        chart.screenshot(path=str(SHOTS / f"graph_view_{kind}_chart.png"))
