"""A graph run's page (`/execution?id=…`) through AppTest on real Postgres and Redis, its step
runs written as the engine writes them (a row per call keyed by step key and item, a
fan-out's own row holding its list, marks for skips): the graph by state, the lanes of the
waterfall, each fan-out item reachable, reasons shown, agent text as text. The lanes'
arithmetic without any server. tests/test_browser_graph.py looks at it in Chromium."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.graph import graph_of, shown_states
from core.vocabulary import StepState
from dashboard import waterfall
from db import queries
from db.session import session_scope
from testkit.factories import ADMIN, add_executions, add_steps, make_graph
from testkit.pages import execution_page, open_view, texts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

GRAPH: list[dict[str, Any]] = [
    {"key": "plan", "name": "Plan the research", "message": "List sources on {{ input.topic }}"},
    {
        "key": "read",
        "message": "Summarise {{ item }}",
        "needs": ["plan"],
        "for_each": "steps.plan.output.sources",
    },
    {"key": "check", "message": "Check", "needs": ["plan"], "when": "input.strict"},
    {
        "key": "brief",
        "message": "Write {{ steps.read.output }}",
        "needs": ["read"],
        "optional_needs": ["check"],
    },
    {"key": "mail", "message": "Mail {{ steps.brief.output }}", "needs": ["brief"]},
]
SOURCES = ["https://a.example", "<b>bold</b> source", "**c**"]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def call(
    number: int, key: str, start: float, end: float, status: str = "succeeded", **more: Any
) -> dict[str, Any]:
    """A call's step run as the engine stores it."""
    return {
        "step_number": number,
        "step_key": key,
        "attempt": 1,
        "status": status,
        "request": {"message": f"call {key}", "url": "http://agent.test/run"},
        "response_status": 200 if status == "succeeded" else 500,
        "duration_ms": int((end - start) * 1000),
        "started_at": at(start),
        "finished_at": at(end),
        **more,
    }


def graph_run() -> uuid.UUID:
    """A failed run: plan, then `read` over three sources (item 1 failed once, then
    succeeded) while `check` was skipped; `brief` failed; `mail` never started."""
    automation = make_graph(GRAPH, name="Research")
    (run,) = add_executions(
        automation,
        [
            {
                "status": "failed",
                "error": "step brief failed: HTTP 500",
                "started_at": T0,
                "finished_at": at(9),
                "total_steps": len(GRAPH),
                "attempt": 1,
                "current_step": 4,
            }
        ],
    )
    add_steps(
        run,
        [
            call(1, "plan", 0, 1, response_body='{"output": {"sources": 3}}'),
            {
                "step_number": 3,
                "step_key": "check",
                "attempt": 1,
                "status": "skipped",
                "request": {},
                "error": "its condition is false: input.strict",
                "started_at": at(1),
                "finished_at": at(1),
            },
            {  # the fan-out's own row: its list, then its items' outputs
                "step_number": 2,
                "step_key": "read",
                "attempt": 1,
                "status": "succeeded",
                "request": {"items": SOURCES},
                "response_body": '["a", "b", "c"]',
                "started_at": at(1),
                "finished_at": at(5),
                "duration_ms": 4000,
            },
            call(2, "read", 1, 3, item=0, response_body='{"output": "a"}'),
            call(2, "read", 1, 2, "failed", item=1, error="HTTP 500"),
            call(2, "read", 1.1, 3.5, item=2, response_body='{"output": "c"}'),
            call(
                2,
                "read",
                3,
                5,
                item=1,
                response_body='{"output": "<img src=x onerror=alert(1)> **shout**"}',
            ),
            call(4, "brief", 5, 8, "failed", error="HTTP 500: **boom**"),
        ],
    )
    return run


# --- the arithmetic ------------------------------------------------------------------------


def test_steps_that_overlapped_are_on_separate_lanes_labelled_by_key_and_item() -> None:
    rows = [queries.StepRunRow(**_row(r)) for r in _rows()]
    bars = waterfall.lanes(rows, zero=T0, now=at(10), live=False)
    lanes = {b.row for b in bars}
    assert lanes == {"plan", "read (all)", "read #0", "read #1", "read #2", "brief"}
    # the skip is no bar (nothing ran); item 1's two tries share its lane with the wait between
    assert [(b.kind, b.attempt) for b in bars if b.row == "read #1"] == [
        ("failed", 1),
        ("backoff", 2),
        ("succeeded", 2),
    ]
    # lanes from the top in the order they started
    first = {b.row: b.rank for b in bars}
    assert sorted(first, key=first.__getitem__)[:2] == ["plan", "read (all)"]
    # overlapping calls never share a lane
    for a in bars:
        for b in bars:
            overlap = a.start_s < b.end_s and b.start_s < a.end_s
            assert a is b or a.row != b.row or not overlap or "backoff" in (a.kind, b.kind)


def test_a_large_fan_out_shares_a_few_lanes_never_overlapping() -> None:
    # given 40 items, 10 at a time, each 1 s
    rows = [
        queries.StepRunRow(
            **_row(call(1, "read", n // 10, n // 10 + 1, item=n, response_body=None))
        )
        for n in range(40)
    ]
    bars = waterfall.lanes(rows, zero=T0, now=at(10), live=False)
    assert {b.row for b in bars} == {f"read lane {n}" for n in range(1, 11)}
    assert {b.call for b in bars} == {f"read #{n}" for n in range(40)}


def test_a_step_without_a_row_is_pending_while_the_run_is_open_then_cancelled() -> None:
    graph = graph_of(GRAPH)
    rows = [queries.StepRunRow(**_row(r)) for r in _rows()]
    ended = shown_states(graph, rows, ended=True)
    assert ended["plan"].state is StepState.SUCCEEDED
    assert ended["read"].state is StepState.SUCCEEDED
    assert ended["check"] == shown_states(graph, rows, ended=False)["check"]
    assert ended["check"].state is StepState.SKIPPED and "condition is false" in str(
        ended["check"].reason
    )
    assert ended["brief"].state is StepState.FAILED
    assert ended["mail"].state is StepState.CANCELLED
    assert shown_states(graph, rows, ended=False)["mail"].state is StepState.PENDING


def _rows() -> list[dict[str, Any]]:
    return [
        call(1, "plan", 0, 1),
        {**call(3, "check", 1, 1, "skipped"), "request": {}, "error": "its condition is false: x"},
        {**call(2, "read", 1, 5), "request": {"items": SOURCES}},
        call(2, "read", 1, 3, item=0),
        call(2, "read", 1, 2, "failed", item=1),
        call(2, "read", 1.1, 3.5, item=2),
        call(2, "read", 3, 5, item=1),
        call(4, "brief", 5, 8, "failed"),
    ]


def _row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "step_name": "",
        "item": None,
        "response_body": None,
        "error": None,
        **{k: v for k, v in data.items() if k != "step_number"},
        "step_number": data["step_number"],
    }


# --- the page ------------------------------------------------------------------------------


@pytest.mark.usefixtures("db", "redis_client")
def test_a_graph_runs_page_draws_its_graph_by_state_lanes_and_each_step() -> None:
    run = graph_run()
    page = execution_page(run)
    assert not page.exception, page.exception
    # the graph, each step filled by its state, with the key to the colours
    graph, key = (str(c.proto.spec) for c in page.get("graphviz_chart"))
    assert 'tooltip="plan: succeeded"' in graph and 'tooltip="read: succeeded"' in graph
    assert 'tooltip="check: skipped"' in graph and 'tooltip="brief: failed"' in graph
    assert 'tooltip="mail: cancelled"' in graph
    for state in StepState:
        assert f'"{state}" [fillcolor=' in key
    # the waterfall, a lane per call
    [chart] = page.get("vega_lite_chart")
    for lane in ("read (all)", "read #0", "read #1", "read #2", "brief"):
        assert f'"{lane}"' in chart.proto.spec
    # a section per step, in the graph's order, with its state
    labels = [e.label for e in page.expander if "·" in e.label]
    assert labels == [
        "plan · succeeded",
        "read · succeeded",
        "check · skipped",
        "brief · failed",
        "mail · cancelled",
    ]
    shown = texts(page)
    # the header counts the steps by state, not by number
    assert "**Steps** 2 succeeded · 1 failed · 1 skipped · 1 cancelled, of 5" in shown
    # the skip's and the never-started step's reasons, the failure as text
    assert "Skipped: its condition is false: input.strict" in shown
    assert "Cancelled: never started: the run ended" in shown
    assert "HTTP 500: **boom**" in shown  # escaped: shown as typed, not bold
    assert "For each: 3 items" in shown


@pytest.mark.usefixtures("db", "redis_client")
def test_each_item_of_a_fan_out_is_reachable_with_its_tries_as_text() -> None:
    run = graph_run()
    page = execution_page(run)
    [items] = page.selectbox
    assert items.options == [
        "#0 · succeeded · 1 try · 2.0 s",
        "#1 · succeeded · 2 tries · 2.0 s",
        "#2 · succeeded · 1 try · 2.4 s",
    ]
    # when item 1 is chosen
    items.set_value(1).run()
    assert not page.exception, page.exception
    # then its value and both tries are shown, the agent's answer as code (never markup)
    codes = [c.value for c in page.code]
    assert '"<b>bold</b> source"' in codes
    assert any("<img src=x onerror=alert(1)> **shout**" in c for c in codes)
    shown = texts(page, bold=False)
    assert "Try 1 · failed" in shown and "Try 2 · succeeded" in shown
    assert "read #1 · started 2026-03-01 12:00:03 UTC (+3.00 s) · took 2.0 s · HTTP 200" in shown
    assert "<img" not in "".join(str(m.value) for m in page.markdown)


@pytest.mark.usefixtures("db", "redis_client")
def test_the_run_grid_has_a_row_per_step_key_of_a_graph() -> None:
    run = graph_run()
    with session_scope() as session:
        detail = queries.execution_detail(session, run, actor=ADMIN)
        assert detail is not None
        grid = queries.execution_grid(session, detail.execution.automation_id, actor=ADMIN)
    assert grid.step_names == ["plan", "read", "check", "brief", "mail"]
    # a fan-out's cell is its own row's state, not its last item's
    assert grid.cells[(run, 2)] == "succeeded" and grid.cells[(run, 3)] == "skipped"
    assert grid.cells[(run, 4)] == "failed" and (run, 5) not in grid.cells
    page = open_view("executions")
    assert not page.exception, page.exception


# --- in Chromium -----------------------------------------------------------------------------

PAGE_JS = """
() => {
  const charts = [...document.querySelectorAll('[data-testid="stGraphVizChart"] svg')];
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; };
  return {graphs: charts.length,
          nodes: charts.length ? charts[0].querySelectorAll('g.node').length : 0,
          key: charts.length > 1 ? charts[1].querySelectorAll('g.node').length : 0,
          boxes: [...charts, ...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
                   .map(box),
          scroll: document.documentElement.scrollWidth};
}
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.usefixtures("db", "redis_client")
@pytest.mark.parametrize(("kind", "width"), [("desktop", 1440), ("phone", 390)])
def test_a_graph_runs_page_in_chromium_fits_the_screen(
    dashboard_url: str, chromium: Any, kind: str, width: int
) -> None:
    from testkit.browser import DESKTOP, PHONE, no_exception, settle, shoot, window

    run = graph_run()
    size = DESKTOP if kind == "desktop" else PHONE
    with window(chromium, viewport=size) as page:
        page.goto(f"{dashboard_url}/execution?id={run}")
        settle(page)
        page.wait_for_selector('[data-testid="stGraphVizChart"] svg g.node')
        page.wait_for_selector(
            '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
        )
        no_exception(page)
        shoot(page, f"graph_run_{kind}_top")
        page.locator('[data-testid="stGraphVizChart"]').nth(1).scroll_into_view_if_needed()
        shoot(page, f"graph_run_{kind}_graph")
        page.get_by_text("seconds since the run started").scroll_into_view_if_needed()
        shoot(page, f"graph_run_{kind}_waterfall")
        # when the fan-out's section is opened and its second item chosen
        page.get_by_text("read · succeeded").click()
        page.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name="#1 · succeeded · 2 tries · 2.0 s").click()
        settle(page)
        page.get_by_text("Try 2 · succeeded").wait_for()
        drawn = page.evaluate(PAGE_JS)
        # then the graph (a node per step) and its key (a box per state) are drawn,
        assert drawn["graphs"] == 2 and drawn["nodes"] == len(GRAPH), drawn
        assert drawn["key"] == len(StepState), drawn
        # everything within the screen, nothing to scroll sideways
        for left, right in drawn["boxes"]:
            assert left >= 0 and right <= width + 1, drawn
        assert drawn["scroll"] <= width, drawn
        # and the agent's answer is text on the page, never an element
        assert page.locator("img[src=x]").count() == 0
        assert page.get_by_text("<img src=x onerror=alert(1)> **shout**").count() >= 1
        no_exception(page)
        page.get_by_text("Try 2 · succeeded").scroll_into_view_if_needed()
        shoot(page, f"graph_run_{kind}_item")


# --- a run by a real worker ----------------------------------------------------------------


def test_a_graph_run_by_a_real_worker_is_shown_step_by_step(
    db: None, redis_client: Any, agent: Any
) -> None:
    from db.runs import RunMessage
    from stepwise.demo_agent import Reply
    from tasks.send import send_run
    from testkit.factories import make_execution
    from testkit.processes import worker_in_process
    from testkit.runs import ended

    # given a graph: a root, a fan-out over the input's list beside a condition, and a join
    automation = make_graph(
        [
            {"key": "plan", "message": "plan"},
            {
                "key": "read",
                "needs": ["plan"],
                "for_each": "input.sources",
                "message": "read {{ item }}",
            },
            {"key": "check", "needs": ["plan"], "when": "input.strict", "message": "check"},
            {"key": "brief", "needs": ["read"], "optional_needs": ["check"], "message": "brief"},
        ],
        agent_url=agent.url,
    )
    agent.responder = lambda call: Reply(200, {"said": "<b>hi</b> **there**"})
    with worker_in_process(threads=2):
        run = make_execution(automation, input={"sources": ["x", "y"], "strict": False})
        send_run(RunMessage(run, 0))
        assert ended(run, agent=agent).status == "succeeded"
    # when its page opens
    page = execution_page(run)
    assert not page.exception, page.exception
    # then each step is there with its state, the skip with its reason
    labels = [e.label for e in page.expander if "·" in e.label]
    assert labels == [
        "plan · succeeded",
        "read · succeeded",
        "check · skipped",
        "brief · succeeded",
    ]
    shown = texts(page)
    assert "Skipped: its condition is false: input.strict" in shown
    assert "**Steps** 3 succeeded · 1 skipped, of 4" in shown
    # the fan-out's items are listed, the chosen one's answer as code
    [items] = page.selectbox
    assert [o.split(" · ")[:3] for o in items.options] == [
        ["#0", "succeeded", "1 try"],
        ["#1", "succeeded", "1 try"],
    ]
    items.set_value(1).run()
    assert '"y"' in [c.value for c in page.code]
    assert any("<b>hi</b> **there**" in c.value for c in page.code)
    [chart] = page.get("vega_lite_chart")
    for lane in ("plan", "read (all)", "read #0", "read #1", "brief"):
        assert f'"{lane}"' in chart.proto.spec
