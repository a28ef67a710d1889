"""Durable waits on the dashboard: the sentences a waiting step is shown with (no server),
then the pages through AppTest on real PostgreSQL and Redis, the waiting runs and their wait
rows written as the engine writes them (no worker): the status filter, the Overview's
counts, each kind's text, agent and automation text shown as typed, Approve / Reject for an
allowed role only and the decision recorded. In Chromium at 1440 and 390 px too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, update

from core.access import Actor
from core.graph import graph_of
from core.vocabulary import AuditAction, Role, StepState
from dashboard import graph_view, waits, waterfall
from db import queries
from db.audit import AuditFilters, list_audit
from db.models import StepRun
from db.session import session_scope
from testkit.factories import (
    ADMIN,
    add_executions,
    add_steps,
    make_automation,
    make_graph,
    make_workspace,
    now,
    person,
    step_runs,
)
from testkit.pages import execution_page, load_view, open_view, texts

T0 = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)

ASYNC = {"kind": "async", "progress": 40, "note": "parsing", "progress_at": None}
APPROVAL = {
    "kind": "approval",
    "role": "editor",
    "on_reject": "fail",
    "on_timeout": "reject",
    "message": "Publish <b>the post</b> to **all** [subscribers](http://evil.example)?",
}


# --- the sentences -------------------------------------------------------------------------


def test_each_kind_of_wait_says_what_it_waits_for() -> None:
    until = T0 + timedelta(hours=2)
    assert waits.waiting_for(ASYNC, until, "UTC") == "Waiting for the agent — 40 % parsing"
    assert waits.waiting_for({**ASYNC, "note": None}, until, "UTC") == (
        "Waiting for the agent — 40 %"
    )
    assert waits.waiting_for({"kind": "async"}, until, "UTC") == "Waiting for the agent"
    assert waits.waiting_for(APPROVAL, until, "UTC") == "Waiting for approval by an editor"
    assert waits.waiting_for({**APPROVAL, "role": "admin"}, until, "UTC") == (
        "Waiting for approval by an admin"
    )
    assert waits.waiting_for({"kind": "sleep"}, until, "Europe/Paris") == (
        "Sleeping until 2026-12-07 17:00:00 CET"
    )


def test_a_waits_deadline_says_what_happens_then() -> None:
    until = T0 + timedelta(hours=2)
    assert waits.deadline(ASYNC, until, T0, "UTC") == (
        "Deadline 2026-12-07 16:00:00 UTC (in 2 h 0 min): without the agent's answer by then, "
        "the step fails."
    )
    assert waits.deadline(APPROVAL, until, T0, "UTC") == (
        "Deadline 2026-12-07 16:00:00 UTC (in 2 h 0 min): undecided by then, it is rejected."
    )
    approve = {**APPROVAL, "on_timeout": "approve"}
    assert str(waits.deadline(approve, until, T0, "UTC")).endswith("it is approved.")
    assert waits.deadline({"kind": "sleep"}, until, T0, "UTC") is None


def test_an_approvals_decision_names_who_when_and_the_comment() -> None:
    decided = {"by": "ada", "at": "2026-12-07T14:05:00+00:00", "approved": True, "comment": "ok"}
    assert waits.decision({**APPROVAL, "decided": decided}, "UTC") == (
        "Approved by ada at 2026-12-07 14:05:00 UTC: “ok”"
    )
    rejected = {**decided, "approved": False, "comment": None}
    assert waits.decision({**APPROVAL, "decided": rejected}, "UTC") == (
        "Rejected by ada at 2026-12-07 14:05:00 UTC"
    )
    timed_out = {**rejected, "by": "timeout"}
    assert waits.decision({**APPROVAL, "decided": timed_out}, "UTC") == (
        "Rejected on timeout at 2026-12-07 14:05:00 UTC: nobody decided by the deadline"
    )
    assert waits.decision(APPROVAL, "UTC") is None


def test_who_may_decide_an_approval_is_its_role_or_stronger() -> None:
    admins = {**APPROVAL, "role": "admin"}
    assert [waits.may_decide(role, APPROVAL) for role in Role] == [False, True, True]
    assert [waits.may_decide(role, admins) for role in Role] == [False, False, True]
    assert waits.refusal(Role.VIEWER, APPROVAL) == (
        "Only an editor or an admin may decide this approval; your role here is viewer."
    )
    assert waits.refusal(Role.EDITOR, admins) == (
        "Only an admin may decide this approval; your role here is editor."
    )


def test_the_graphs_key_has_a_box_per_state_waiting_included() -> None:
    key = graph_view.legend()
    for state in StepState:
        assert f'"{state}" [fillcolor=' in key
    assert '"waiting" [fillcolor="#ffe8cc"]' in key


def test_a_step_that_waits_says_how_in_the_graph() -> None:
    drawn = graph_view.dot(graph_of(WAIT_GRAPH))
    assert '"draft" [label="draft\\nasync: answers later"' in drawn
    assert '"review" [label="review\\napproval by an editor"' in drawn
    assert '"pause" [label="pause\\nsleep 600 s"' in drawn
    assert '"plan" [label="plan",' in drawn


def test_a_waiting_step_runs_bar_grows_to_now_while_the_run_is_live() -> None:
    # given a step run waiting since 1 s after the start
    waiting = queries.StepRunRow(**_waiting_row(start_s=1.0))
    # when drawn at 60 s, live and then after the run ended
    [live] = waterfall.lanes([waiting], zero=T0, now=T0 + timedelta(seconds=60))
    [ended] = waterfall.lanes([waiting], zero=T0, now=T0 + timedelta(seconds=60), live=False)
    # then its bar ends now while live, marked in flight
    assert (live.kind, live.start_s, live.end_s, live.in_flight) == ("waiting", 1.0, 60.0, True)
    assert not ended.in_flight and ended.end_s == 1.0


def _waiting_row(start_s: float) -> dict[str, Any]:
    return {
        "step_number": 1,
        "step_name": "",
        "step_key": "draft",
        "attempt": 1,
        "status": "waiting",
        "response_status": 202,
        "duration_ms": None,
        "started_at": T0 + timedelta(seconds=start_s),
        "finished_at": None,
        "request": {"url": "http://agent.test/run"},
        "response_body": None,
        "error": None,
        "wait": ASYNC,
        "wait_until": T0 + timedelta(hours=1),
    }


# --- the pages -----------------------------------------------------------------------------

# A post drafted by an async agent, reviewed by a person and held back ten minutes, side by
# side after a plan; published once all three are done.
WAIT_GRAPH: list[dict[str, Any]] = [
    {"key": "plan", "message": "Plan a post on {{ input.topic }}"},
    {
        "key": "draft",
        "kind": "async",
        "message": "Draft it",
        "needs": ["plan"],
        "timeout_s": 3600,
    },
    {
        "key": "review",
        "kind": "approval",
        "message": "Publish a post on {{ input.topic }}?",
        "needs": ["plan"],
    },
    {"key": "pause", "kind": "sleep", "sleep_s": 600, "needs": ["plan"]},
    {"key": "publish", "message": "Publish", "needs": ["draft", "review", "pause"]},
]


def waiting_post_run(
    *, review: dict[str, Any] | None = None, name: str = "Weekly post", actor: Actor = ADMIN
) -> uuid.UUID:
    """A run parked as the engine parks one: its plan done, its draft waiting for the agent
    (40 %), its review for an editor's approval (`review`: its wait), its pause sleeping."""
    base = now()
    automation = make_graph(WAIT_GRAPH, name=name, actor=actor)
    (run,) = add_executions(
        automation,
        [
            {
                "status": "waiting",
                "queued_at": base - timedelta(minutes=6),
                "attempt": 1,
                "started_at": base - timedelta(minutes=5),
                "finished_at": None,
                "total_steps": len(WAIT_GRAPH),
                "current_step": 4,
                "available_at": base + timedelta(minutes=10),
                "input": {"topic": "waits"},
            }
        ],
    )
    started = base - timedelta(minutes=4)
    progress_at = (base - timedelta(seconds=30)).isoformat()
    add_steps(
        run,
        [
            {
                "step_number": 1,
                "step_key": "plan",
                "attempt": 1,
                "status": "succeeded",
                "request": {"message": "Plan a post on waits", "url": "http://agent.test/run"},
                "response_status": 200,
                "response_body": '{"output": "a plan"}',
                "started_at": base - timedelta(minutes=5),
                "finished_at": started,
                "duration_ms": 60_000,
            },
            {
                "step_number": 2,
                "step_key": "draft",
                "attempt": 1,
                "status": "waiting",
                "request": {"message": "Draft it", "url": "http://agent.test/run"},
                "response_status": 202,
                "started_at": started,
                "wait_until": started + timedelta(hours=1),
                "wait": {**ASYNC, "progress_at": progress_at},
            },
            {
                "step_number": 3,
                "step_key": "review",
                "attempt": 1,
                "status": "waiting",
                "request": {},
                "started_at": started,
                "wait_until": started + timedelta(days=1),
                "wait": review or APPROVAL,
            },
            {
                "step_number": 4,
                "step_key": "pause",
                "attempt": 1,
                "status": "waiting",
                "request": {},
                "started_at": started,
                "wait_until": started + timedelta(minutes=10),
                "wait": {"kind": "sleep"},
            },
        ],
    )
    return run


@pytest.mark.usefixtures("db", "redis_client")
def test_a_waiting_runs_page_says_what_each_step_waits_for_and_until_when() -> None:
    run = waiting_post_run()
    page = execution_page(run)
    # the run is waiting, and so are three of its steps, each with its own words
    labels = [e.label for e in page.expander if "·" in e.label]
    assert labels == [
        "plan · succeeded",
        "draft · waiting",
        "review · waiting",
        "pause · waiting",
        "publish · pending",
    ]
    shown = texts(page)
    assert ":orange-badge[waiting]" in shown and "refreshing while it waits" in shown
    assert "**Steps** 1 pending · 3 waiting · 1 succeeded, of 5" in shown
    assert "Waiting for the agent — 40 % parsing" in shown
    assert "without the agent's answer by then, the step fails." in shown
    assert "Progress reported 30.0 s ago." in shown or "Progress reported 3" in shown
    [bar] = page.get("html")[-1:]  # the agent's progress, a bar in the colour of waiting
    assert 'aria-valuenow="40"' in bar.proto.body and "width:40%" in bar.proto.body
    assert "Waiting for approval by an editor" in shown
    assert "undecided by then, it is rejected." in shown
    assert "Sleeping until " in shown
    # the graph colours the waiting steps
    graph = str(page.get("graphviz_chart")[0].proto.spec)
    for key in ("draft", "review", "pause"):
        assert f'tooltip="{key}: waiting"' in graph
    assert graph.count('fillcolor="#ffe8cc"') == 3


@pytest.mark.usefixtures("db", "redis_client")
def test_an_approvals_message_is_shown_as_typed() -> None:
    run = waiting_post_run()
    page = execution_page(run)
    # the message, HTML and Markdown in it, is text: the characters typed, never markup
    assert APPROVAL["message"] in texts(page)
    written = "".join(str(m.value) for m in page.markdown)
    assert "<b>" not in written and "**all**" not in written and "](http" not in written


@pytest.mark.usefixtures("db", "redis_client")
def test_the_status_filter_lists_the_waiting_runs() -> None:
    # given a waiting run beside a running and a failed one
    waiting = waiting_post_run()
    automation = make_automation(name="Other")
    add_executions(automation, [{"status": "running", "finished_at": None}, {"status": "failed"}])
    # when Executions opens filtered by status waiting (a link, as the Overview gives)
    at = load_view("executions", query={"status": "waiting"})
    at.run()
    assert not at.exception, at.exception
    # then waiting is a choice of the filter, and only the waiting run is listed, in flight
    assert "waiting" in at.multiselect(key="ex_status").options
    assert at.multiselect(key="ex_status").value == ["waiting"]
    in_flight = at.dataframe[0].value
    assert list(in_flight["Id"]) == [str(waiting)]
    assert [list(s) for s in in_flight["Status"]] == [["waiting"]]
    assert list(in_flight["Steps"]) == ["3/5, waiting"]
    assert "#e8590c" in at.dataframe[0].proto.columns  # its colour, the one palette's


@pytest.mark.usefixtures("db", "redis_client")
def test_the_overview_counts_runs_waiting_and_approvals_pending() -> None:
    # given two waiting runs of ours (one approval decided, still waiting on its sleep)
    # and a waiting run of another workspace
    waiting_post_run()
    decided = {"by": "ada", "at": now().isoformat(), "approved": True, "comment": None}
    waiting_post_run(review={**APPROVAL, "decided": decided}, name="Decided")
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.wait["decided"].is_not(None))
            .values(status="succeeded", finished_at=func.now())
        )
    waiting_post_run(name="Theirs", actor=make_workspace())
    # when the Overview opens
    at = open_view("overview")
    # then ours are counted
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Runs waiting"] == "2"
    assert metrics["Approvals pending"] == "1"
    # and the approval waiting for a person is listed, who may decide it said
    pending = at.dataframe[0].value
    assert list(pending["Automation"]) == ["Weekly post"]
    assert list(pending["Step"]) == ["review"]
    assert list(pending["Who decides"]) == ["an editor or an admin"]


@pytest.mark.usefixtures("db", "redis_client")
def test_an_editor_approves_with_a_comment_and_the_decision_is_recorded() -> None:
    # given a run waiting for an editor's approval, opened by an editor
    run = waiting_post_run()
    editor = person("eddie@example.com", Role.EDITOR)
    page = execution_page(run, acting=editor)
    assert {"Approve", "Reject"} <= {b.label for b in page.button}
    # when they approve with a comment
    page.text_area(key=f"decide_{run}_review_comment").input("Looks **good** <i>to me</i>")
    next(b for b in page.button if b.label == "Approve").click().run()
    assert not page.exception, page.exception
    # then the step succeeded, the decision kept on its row and audited
    [review] = [r for r in step_runs(run) if r.step_key == "review"]
    assert review.status == "succeeded"
    decided = (review.wait or {})["decided"]
    assert (decided["by"], decided["approved"]) == ("eddie@example.com", True)
    assert decided["comment"] == "Looks **good** <i>to me</i>"
    [audited] = _audit(AuditAction.APPROVE)
    assert audited.target_id == run and audited.actor == "eddie@example.com"
    # and the page says who decided, when, and the comment as typed; no buttons are left
    page = execution_page(run, acting=editor)
    shown = texts(page)
    assert "Approved by eddie@example.com at " in shown
    assert ": “Looks **good** <i>to me</i>”" in shown
    assert "Approve" not in {b.label for b in page.button}


@pytest.mark.usefixtures("db", "redis_client")
@pytest.mark.parametrize(("on_reject", "status"), [("fail", "failed"), ("skip", "skipped")])
def test_a_rejection_is_recorded_and_shown_as_the_step_ends(on_reject: str, status: str) -> None:
    # given an approval that fails, or skips, its step when rejected
    run = waiting_post_run(review={**APPROVAL, "on_reject": on_reject})
    # when the local admin rejects it without a comment
    page = execution_page(run)
    next(b for b in page.button if b.label == "Reject").click().run()
    assert not page.exception, page.exception
    # then the step ended so, the rejection audited and shown on the step
    [review] = [r for r in step_runs(run) if r.step_key == "review"]
    assert review.status == status and (review.wait or {})["decided"]["approved"] is False
    assert len(_audit(AuditAction.REJECT)) == 1
    page = execution_page(run)
    assert f"review · {status}" in [e.label for e in page.expander]
    assert "Rejected by local admin at " in texts(page)


@pytest.mark.usefixtures("db", "redis_client")
@pytest.mark.parametrize(
    ("role", "needed", "why"),
    [
        (
            Role.VIEWER,
            "editor",
            "Only an editor or an admin may decide this approval; your role here is viewer.",
        ),
        (Role.EDITOR, "admin", "Only an admin may decide this approval; your role here is editor."),
    ],
)
def test_a_member_whose_role_may_not_decide_sees_why_and_no_buttons(
    role: Role, needed: str, why: str
) -> None:
    run = waiting_post_run(review={**APPROVAL, "role": needed})
    page = execution_page(run, acting=person("someone@example.com", role))
    assert not {"Approve", "Reject"} & {b.label for b in page.button}
    assert why in texts(page)
    assert APPROVAL["message"] in texts(page)  # the message is still theirs to read


def _audit(action: AuditAction) -> list[Any]:
    with session_scope() as session:
        return list_audit(session, AuditFilters(actions=(action,)), actor=ADMIN)


# --- in Chromium -----------------------------------------------------------------------------

WIDTHS_JS = """
() => ({scroll: document.documentElement.scrollWidth,
        boxes: [...document.querySelectorAll(
                  '[data-testid="stAlert"], [data-testid="stGraphVizChart"] svg, '
                  + '[data-testid="stForm"], [data-testid="stProgress"]')]
               .map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })})
"""


# The page has been drawn again since `arg`, the progress caption's text (its age moves on).
REDRAWN_JS = """
before => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
  .some(e => e.innerText.includes('Progress reported') && !e.innerText.includes(before))
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.usefixtures("db", "redis_client")
@pytest.mark.parametrize(("kind", "width"), [("desktop", 1440), ("phone", 390)])
def test_a_waiting_runs_page_in_chromium(
    dashboard_url: str, chromium: Any, kind: str, width: int
) -> None:
    from testkit.browser import DESKTOP, PHONE, no_exception, settle, shoot, window

    # given a run waiting for the agent (40 %), an approval and a sleep (and another one)
    run = waiting_post_run()
    waiting_post_run(name="Monthly post")
    with window(chromium, viewport=DESKTOP if kind == "desktop" else PHONE) as page:
        # when its page opens
        page.goto(f"{dashboard_url}/execution?id={run}")
        settle(page)
        page.get_by_text("Waiting for approval by an editor").wait_for()
        no_exception(page)
        shoot(page, f"waits_run_{kind}_top")
        # then each waiting step says so, open, the approval's message as typed (no element)
        page.get_by_text("Waiting for the agent — 40 % parsing").wait_for()
        typed = "Publish <b>the post</b> to **all** [subscribers]"  # the link: a word joiner
        assert page.get_by_text(typed).count() == 1
        assert page.locator("b", has_text="the post").count() == 0
        assert page.locator('a[href^="http://evil"]').count() == 0
        # everything within the screen, nothing to scroll sideways
        drawn = page.evaluate(WIDTHS_JS)
        assert drawn["scroll"] <= width, drawn
        for left, right in drawn["boxes"]:
            assert left >= 0 and right <= width + 1, drawn
        page.get_by_text("Waiting for the agent — 40 % parsing").scroll_into_view_if_needed()
        shoot(page, f"waits_run_{kind}_draft")
        page.get_by_text(typed).scroll_into_view_if_needed()
        shoot(page, f"waits_run_{kind}_review")
        # when a comment is typed, kept over the page's next redraw, and Approve pressed
        caption = page.get_by_text("Progress reported").first
        before = caption.inner_text()
        page.get_by_label("Comment (optional)").fill("Ship it <b>now</b>")
        page.wait_for_function(REDRAWN_JS, arg=before)
        page.get_by_role("button", name="Approve").click()
        # then the page says so, and the decided step (closed now) who, when and the comment
        page.get_by_text("Approved review: the run goes on.").wait_for()
        page.get_by_text("review · succeeded").click()
        page.get_by_text("Approved by local admin at").wait_for()
        assert page.get_by_text("Ship it <b>now</b>").count() >= 1  # the decision, the output
        assert page.locator("b", has_text="now").count() == 0
        no_exception(page)
        shoot(page, f"waits_run_{kind}_decided")
        # and the Overview counts the runs waiting, listing the other run's approval
        page.goto(dashboard_url)
        settle(page)
        page.get_by_text("Waiting for approval", exact=True).wait_for()
        no_exception(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shoot(page, f"waits_overview_{kind}")


# --- a run parked by a real worker -----------------------------------------------------------


def test_an_approval_parked_by_a_real_worker_is_approved_on_its_page_and_the_run_ends(
    db: None, redis_client: Any, agent: Any
) -> None:
    from db.runs import RunMessage
    from tasks.send import send_run
    from testkit.factories import execution, make_execution
    from testkit.processes import worker_in_process
    from testkit.runs import ended
    from testkit.waiting import wait_for

    # given a graph whose review, an approval, comes before the publishing call
    automation = make_graph(
        [
            {"key": "review", "kind": "approval", "message": "Ship **{{ input.what }}**?"},
            {"key": "publish", "message": "publish", "needs": ["review"]},
        ],
        agent_url=agent.url,
    )
    with worker_in_process(threads=2):
        run = make_execution(automation, input={"what": "<i>v2</i>"})
        send_run(RunMessage(run, 0))
        # when the worker has parked it
        wait_for(lambda: execution(run).status == "waiting", message="the run to park")
        page = execution_page(run)
        # then its page says what it waits for, the rendered message as typed
        assert "Waiting for approval by an editor" in texts(page)
        assert "Ship **<i>v2</i>**?" in texts(page)
        # and an approval from the page wakes the run, which ends
        next(b for b in page.button if b.label == "Approve").click().run()
        assert not page.exception, page.exception
        assert ended(run, agent=agent).status == "succeeded"
    assert [c.body["step_number"] for c in agent.calls_for(str(run))] == [2]
    page = execution_page(run)
    assert "Approved by local admin at " in texts(page)
