"""The execution page (`/execution?id=<execution id>`) through AppTest, on real Postgres and
Redis; the waterfall's arithmetic without any server. tests/test_browser.py watches it live."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, update

from core.vocabulary import ExecutionStatus, Role
from dashboard import ui, waterfall
from db import queries
from db.models import Execution
from db.session import session_scope
from testkit.factories import (
    ADMIN,
    add_executions,
    add_steps,
    make_automation,
    make_workspace,
    person,
)
from testkit.pages import execution_page, load_view, texts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def step(
    number: int, attempt: int, status: str, start_s: float, end_s: float | None, **more: object
) -> queries.StepRunRow:
    return queries.StepRunRow(
        step_number=number,
        step_name=f"s{number}",
        attempt=attempt,
        status=status,
        response_status=None,
        duration_ms=None,
        started_at=T0 + timedelta(seconds=start_s),
        finished_at=None if end_s is None else T0 + timedelta(seconds=end_s),
        request={},
        response_body=None,
        error=None,
    )


# --- the waterfall's arithmetic ------------------------------------------------------------


def test_waterfall_has_attempts_backoff_gaps_and_the_step_in_flight() -> None:
    # given step 1 that failed once, waited 2 s, then succeeded; step 2 still running
    steps = [
        step(1, 1, "failed", 0.0, 0.5),
        step(1, 2, "succeeded", 2.5, 3.0),
        step(2, 1, "running", 3.1, None),
    ]
    # when drawn at 5 s
    bars = waterfall.bars(steps, zero=T0, now=T0 + timedelta(seconds=5))
    # then each attempt is a bar, the wait between attempts a backoff bar, and step 2 ends now
    assert [(b.row, b.kind, b.start_s, b.end_s) for b in bars] == [
        ("1. s1", "failed", 0.0, 0.5),
        ("1. s1", ui.BACKOFF, 0.5, 2.5),
        ("1. s1", "succeeded", 2.5, 3.0),
        ("2. s2", "running", 3.1, 5.0),
    ]
    assert [b.in_flight for b in bars] == [False, False, False, True]
    assert waterfall.chart(bars).to_dict()["layer"]


def test_a_finished_runs_attempts_end_by_their_duration_never_in_flight() -> None:
    # given a failed run whose attempt row has a duration but no end time stored
    unfinished = step(1, 1, "failed", 0.0, None)
    timed = replace(step(2, 1, "failed", 1.0, None), duration_ms=250)
    # when drawn after the run ended
    bars = waterfall.bars([unfinished, timed], zero=T0, now=T0 + timedelta(seconds=60), live=False)
    # then nothing is in flight and no bar runs on to now
    assert [(b.kind, b.end_s, b.in_flight) for b in bars] == [
        ("failed", 0.0, False),
        ("failed", 1.25, False),
    ]


def test_waterfall_origin_is_the_earliest_start() -> None:
    steps = [step(1, 1, "succeeded", 1.0, 2.0)]
    assert waterfall.origin(steps, T0 + timedelta(seconds=3)) == T0 + timedelta(seconds=1)
    assert waterfall.origin([], None) is None


# --- the palette -----------------------------------------------------------------------------


def test_one_palette_for_every_status_and_success_rates_by_threshold() -> None:
    assert set(ui.STATUS_COLORS) == set(ExecutionStatus)  # waiting too
    assert set(ExecutionStatus) <= set(ui.STATUS_COLOR_NAMES)  # and a badge each
    scale = ui.status_scale(with_backoff=True).to_dict()
    assert scale["domain"][:7] == list(ui.STATUS_COLORS)
    assert scale["range"][:7] == list(ui.STATUS_COLORS.values())
    # defect 7: a 100 % rate is green, never red
    assert ui.rate_band(1.0) == "good" and ui.RATE_COLORS["good"] == ui.STATUS_COLORS["succeeded"]
    assert ui.rate_band(0.9) == "fair" and ui.rate_band(0.5) == "poor"
    assert ui.rate_band(None) == "none"
    column = ui.rate_column("Success rate", [1.0, 0.9, 0.5])
    colors = {o["value"]: o["color"] for o in column["type_config"]["options"]}
    assert colors == {"100%": "#2e9d5b", "90%": "#e0a526", "50%": "#d64545"}


# --- the page ------------------------------------------------------------------------------


pytestmark_db = pytest.mark.usefixtures("db", "redis_client")


@pytestmark_db
def test_a_run_page_shows_header_waterfall_attempts_and_actions() -> None:
    # given a failed run whose step 1 failed, then succeeded, and step 2 failed
    automation_id = make_automation(name="Nightly report", steps=2)
    (run,) = add_executions(automation_id, [{"status": "failed", "error": "step 2: HTTP 503"}])
    add_steps(
        run,
        [
            {
                "step_number": 1,
                "attempt": 1,
                "status": "failed",
                "request": {
                    "message": "one",
                    "headers": {"Authorization": "{{ secret.AGENT_TOKEN }}"},
                },
                "response_status": 500,
                "response_body": "oops",
                "duration_ms": 30,
                "error": "HTTP 500",
            },
            {
                "step_number": 1,
                "attempt": 2,
                "status": "succeeded",
                "request": {"message": "one"},
                "response_status": 200,
                "response_body": '{"output": "**done**"}',
                "duration_ms": 40,
            },
            {
                "step_number": 2,
                "attempt": 1,
                "status": "failed",
                "request": {"message": "two"},
                "response_status": 503,
                "duration_ms": 20,
                "error": "HTTP 503",
            },
        ],
    )
    # when its page opens
    at = execution_page(run)
    # then the header has the status badge and the error, the waterfall is drawn,
    text = texts(at)
    assert "Nightly report" in text and ":red-badge[failed]" in at.markdown[0].value
    assert "step 2: HTTP 503" in text
    assert len(at.get("vega_lite_chart")) == 1
    # every attempt is listed with its request as stored and its response as text
    labels = [e.label for e in at.expander if e.label.startswith("Step")]
    assert labels == [
        "Step 1 · attempt 1 · failed",
        "Step 1 · attempt 2 · succeeded",
        "Step 2 · attempt 1 · failed",
    ]
    assert at.json[0].value and "{{ secret.AGENT_TOKEN }}" in at.json[0].value
    responses = [c for c in at.code if c.language == "json"]  # the curl commands are bash
    assert '"output": "**done**"' in responses[1].value
    # and an editor can retry it or replay it (not cancel: it is over)
    assert [b.label for b in at.button] == ["Retry", "Replay"]
    at.button(key="run_retry").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        detail = queries.execution_detail(session, run, actor=ADMIN)
    assert detail is not None and detail.execution.status == "queued"
    assert "Retry queued" in texts(at)


@pytestmark_db
def test_a_traced_run_shows_its_trace_id_and_an_untraced_one_none() -> None:
    automation_id = make_automation(name="Traced")
    traced, untraced = add_executions(
        automation_id, [{"status": "succeeded", "trace_id": "ab" * 16}, {"status": "succeeded"}]
    )

    assert f"Trace `{'ab' * 16}`" in texts(execution_page(traced))
    assert "Trace `" not in texts(execution_page(untraced))


@pytestmark_db
@pytest.mark.parametrize("wanted", ["not-a-uuid", str(uuid.uuid4()), ""])
def test_a_bad_or_unknown_run_id_says_not_found(wanted: str) -> None:
    at = execution_page(wanted)
    assert "Execution not found" in texts(at)


@pytestmark_db
def test_another_workspaces_run_is_not_found() -> None:
    theirs = make_workspace("Their team", admin="eve@their.example")
    (their_run,) = add_executions(
        make_automation(actor=theirs, name="Payroll"), [{"status": "failed"}]
    )
    at = execution_page(their_run)
    assert "Execution not found in this workspace" in texts(at)
    assert "Payroll" not in repr(at)


@pytestmark_db
def test_a_viewer_sees_the_run_without_actions() -> None:
    automation_id = make_automation(name="Viewed")
    (run,) = add_executions(automation_id, [{"status": "failed", "error": "HTTP 500"}])
    viewer = person("vera@example.com", role=Role.VIEWER)
    at = execution_page(run, acting=viewer)
    assert "Viewed" in texts(at)
    assert not at.button


@pytestmark_db
def test_a_watched_run_that_ends_is_redrawn_not_lost() -> None:
    # given a running run on its page (defect 1: its label held the status)
    automation_id = make_automation(name="Watched")
    (running,) = add_executions(automation_id, [{"status": "running", "finished_at": None}])
    at = execution_page(running)
    assert ":violet-badge[running]" in at.markdown[0].value
    assert [b.label for b in at.button] == ["Cancel"]
    # when it ends
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == running)
            .values(status="succeeded", finished_at=func.now())
        )
    at.run()
    # then the same page shows it finished, with no error
    assert not at.exception, at.exception
    assert ":green-badge[succeeded]" in at.markdown[0].value
    assert [b.label for b in at.button] == ["Replay"]  # no Cancel: it ended


# --- the run grid ------------------------------------------------------------------------


@pytestmark_db
def test_the_run_grid_has_a_cell_per_run_and_step_in_status_colour() -> None:
    # given two runs of a two-step automation: one succeeded, one failed at step 2
    from dashboard import grid

    automation_id = make_automation(name="Gridded", steps=2)
    failed, ok = add_executions(automation_id, [{"status": "failed"}, {"status": "succeeded"}])
    add_steps(
        ok, [{"step_number": n, "attempt": 1, "status": "succeeded", "request": {}} for n in (1, 2)]
    )
    add_steps(
        failed,
        [
            {"step_number": 1, "attempt": 1, "status": "succeeded", "request": {}},
            {"step_number": 2, "attempt": 1, "status": "failed", "request": {}},
            {"step_number": 2, "attempt": 2, "status": "failed", "request": {}},
        ],
    )
    # when the grid is read
    with session_scope() as session:
        found = queries.execution_grid(session, automation_id, actor=ADMIN)
    # then runs go oldest to newest, the whole run first, then each step's last attempt
    table = [(c["position"], c["row"], c["status"]) for c in grid.cells(found)]
    assert [t for t in table if t[0] == 0] == [
        (0, "whole execution", "succeeded"),
        (0, "1. step 1", "succeeded"),
        (0, "2. step 2", "succeeded"),
    ]
    assert [t[2] for t in table if t[0] == 1] == ["failed", "succeeded", "failed"]
    assert grid.chart(found).to_dict()["params"][0]["name"] == grid.SELECTION
    # and another workspace reads nothing of it
    theirs = make_workspace("Their team", admin="eve@their.example")
    with session_scope() as session:
        assert queries.execution_grid(session, automation_id, actor=theirs).executions == []


@pytestmark_db
def test_the_run_grids_columns_carry_their_times_and_a_cell_tells_run_status_duration() -> None:
    # given a two-step run whose steps took 1.5 s and 0.25 s, queued at a known time
    from dashboard import grid, ui

    automation_id = make_automation(name="Timed", steps=2)
    (run,) = add_executions(automation_id, [{"status": "succeeded"}])
    add_steps(
        run,
        [
            {
                "step_number": n,
                "attempt": 1,
                "status": "succeeded",
                "request": {},
                "duration_ms": ms,
            }
            for n, ms in ((1, 1500), (2, 250))
        ],
    )
    with session_scope() as session:
        found = queries.execution_grid(session, automation_id, actor=ADMIN)
    # when the grid is drawn
    drawn = grid.chart(found).to_dict()
    by_row = {c["row"]: c for c in grid.cells(found)}
    # then its column is labelled with the run's time, not left bare
    label = ui.fmt_column_time(found.executions[0].queued_at, "UTC")
    assert drawn["encoding"]["x"]["field"] == "column"
    assert drawn["encoding"]["x"]["axis"].get("labels", True) is not False
    assert {c["column"] for c in by_row.values()} == {label}
    # and hovering a cell tells the run, its status and how long it took
    tips = [t["field"] for t in drawn["encoding"]["tooltip"]]
    assert {"run", "status", "duration"} <= set(tips)
    assert by_row["1. step 1"]["duration"] == ui.fmt_duration(1.5)
    assert by_row["2. step 2"]["duration"] == ui.fmt_duration(0.25)
    assert by_row["whole execution"]["duration"] == ui.fmt_duration(1.0)
    assert by_row["whole execution"]["run"].endswith("manual")


@pytestmark_db
def test_executions_show_the_run_grid_once_an_automation_is_chosen() -> None:
    automation_id = make_automation(name="Gridded")
    add_executions(automation_id, [{"status": "failed"}, {"status": "succeeded"}])
    at = load_view("executions")
    at.run()
    assert "Execution grid" not in [s.value for s in at.subheader]
    at.selectbox(key="ex_automation").set_value(str(automation_id)).run()
    assert not at.exception, at.exception
    assert "Execution grid" in [s.value for s in at.subheader]


@pytestmark_db
def test_a_steps_request_is_shown_as_a_curl_command_with_its_secrets_masked() -> None:
    # given a step whose stored request has a secret reference and a literal credential
    automation_id = make_automation(name="Curl me")
    (run,) = add_executions(automation_id, [{"status": "succeeded"}])
    request = {
        "url": "https://agent.example/run",
        "headers": {
            "Authorization": "Bearer {{ secret.AGENT_TOKEN }}",
            "X-Api-Key": "k-Lq81literal",
            "X-Team": "ops",
        },
        "body": {"message": "it's ready", "step_number": 1},
    }
    add_steps(run, [{"step_number": 1, "attempt": 1, "status": "succeeded", "request": request}])
    # when its page opens
    at = execution_page(run)
    (curl,) = [c.value for c in at.code if c.value.startswith("curl ")]
    # then the request is a curl command: the URL, the body, the plain header as sent
    assert "-X POST https://agent.example/run" in curl and "-H 'X-Team: ops'" in curl
    assert """--data-raw '{"message": "it'"'"'s ready", "step_number": 1}'""" in curl
    # and no secret: a reference is a shell variable, a credential and the signature placeholders
    assert """-H 'Authorization: Bearer '"${AGENT_TOKEN}\"""" in curl
    assert "k-Lq81literal" not in curl and "-H 'X-Api-Key: <x-api-key>'" in curl
    assert "Stepwise-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256" in curl


@pytestmark_db
def test_a_run_is_replayed_with_edited_input_and_audited() -> None:
    from db.audit import AuditFilters, list_audit
    from testkit.factories import fetch

    # given a finished run that had an input
    automation_id = make_automation(name="Replayed")
    (run,) = add_executions(automation_id, [{"status": "failed", "input": {"order": 41}}])
    at = execution_page(run)
    # when its input is edited and it is replayed
    at.text_area(key=f"replay_{run}_input").input('{"order": 42}')
    at.button(key=f"replay_{run}_go").click().run()
    # then a new run of the automation starts with the edited input, the old one untouched
    with session_scope() as session:
        rows = queries.list_executions(
            session, queries.ExecutionFilters(automation_id=automation_id), actor=ADMIN
        ).rows
        audited = list_audit(session, AuditFilters(actions=("run_now",)), actor=ADMIN)
    (new,) = [r for r in rows if r.id != run]
    assert (new.status, new.trigger) == ("queued", "manual")
    assert fetch(Execution, new.id).input == {"order": 42}
    assert fetch(Execution, run).input == {"order": 41}
    # and the replay is audited, naming the run it replays
    assert [(r.target_id, r.details.get("replay_of")) for r in audited] == [
        (automation_id, str(run))
    ]
    # and input that is not a JSON object is refused, starting nothing
    at = execution_page(run)
    at.text_area(key=f"replay_{run}_input").input("[1, 2]")
    at.button(key=f"replay_{run}_go").click().run()
    assert "Input: " in texts(at)
    with session_scope() as session:
        assert (
            queries.count_executions(
                session, queries.ExecutionFilters(automation_id=automation_id), actor=ADMIN
            )
            == 2
        )
