"""An async step's callback through the real `api` process: accepted once (and its run woken),
progress kept, and each refusal (twice, late, forged, cancelled, a bad body) answered
clearly as problem+json with nothing written.

The waiting runs are stored as the engine stores them (`testkit.waits.parked_run`); times
are set in the database (no sleeping). The whole way, from a real agent answering 202 to
the dependent step, is tests/test_waits_e2e.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.secrets import SecretBox, new_key
from core.settings import get_settings
from core.vocabulary import ExecutionStatus, StepStatus
from core.waits import WaitPurpose, approval_token, seal_token
from db.models import StepRun
from db.session import session_scope
from testkit.api import bearer, make_token, start_api, writes
from testkit.factories import execution, fetch, now
from testkit.waiting import wait_for
from testkit.waits import callback_of, parked_run, wake_ups

pytestmark = pytest.mark.slow  # the real `api` process
PROBLEM = "application/problem+json"


def _refused(answer: httpx.Response, status: int, says: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status and says in problem["detail"], problem
    return problem


def test_a_callback_is_accepted_once_and_wakes_its_run(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a run parked on an async step (and two approvals)
    execution_id, steps = parked_run()
    url = callback_of(steps["fetch"])
    # when its agent POSTs the output to the callback URL, without any API token
    output = {"summary": "3 sources", "pages": [1, 2, 3], "ok": True}
    answer = api_http.post(url, json={"output": output})
    # then it is accepted: the step succeeded with the output, and the run is woken now
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": True, "step_status": "succeeded"}
    row = fetch(StepRun, steps["fetch"])
    assert row.status == StepStatus.SUCCEEDED and json.loads(row.response_body or "") == output
    assert row.finished_at is not None and row.wait is not None and row.wait["answered_at"]
    run = execution(execution_id)
    assert run.status == ExecutionStatus.WAITING and run.available_at <= now()
    assert wake_ups(redis_client, execution_id) == 1
    # and a second callback (another answer, or the same) is refused and changes nothing
    before = writes()
    for body in ({"output": {"summary": "other"}}, {"output": output}, {"error": "late"}):
        _refused(api_http.post(url, json=body), 409, "already answered")
    _refused(api_http.post(url, json={"progress": 90}), 409, "already answered")
    assert writes() == before
    assert wake_ups(redis_client, execution_id) == 1


def test_an_error_fails_the_step_with_the_agents_reason(
    api_http: httpx.Client, redis_client: Any
) -> None:
    execution_id, steps = parked_run()
    answer = api_http.post(callback_of(steps["fetch"]), json={"error": "the site refused us (403)"})
    assert answer.json() == {"accepted": True, "step_status": "failed"}
    row = fetch(StepRun, steps["fetch"])
    assert row.status == StepStatus.FAILED
    assert row.error == "the agent reported a failure: the site refused us (403)"
    assert wake_ups(redis_client, execution_id) == 1


def test_progress_is_kept_any_number_of_times_and_keeps_the_wait_open(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a parked run's async step
    execution_id, steps = parked_run()
    url = callback_of(steps["fetch"])
    admin = bearer(make_token())
    # when its agent reports progress twice
    first = api_http.post(url, json={"progress": 40, "note": "parsing"})
    assert first.json() == {"accepted": True, "step_status": "waiting"}, first.text
    assert api_http.post(url, json={"progress": 70.4, "note": "writing"}).status_code == 200
    # then the last is kept on the step, which still waits; the run is not woken for it
    row = fetch(StepRun, steps["fetch"])
    assert row.status == StepStatus.WAITING
    assert row.wait is not None and (row.wait["progress"], row.wait["note"]) == (70, "writing")
    assert row.wait["progress_at"]
    assert wake_ups(redis_client, execution_id) == 0
    # and the list of waits shows it, on whom the step waits
    listed = api_http.get("/v1/waits", headers=admin).json()["items"]
    [fetching] = [w for w in listed if w["kind"] == "async"]
    assert (fetching["progress"], fetching["note"], fetching["waiting_on"]) == (
        70,
        "writing",
        "the agent",
    )
    # and a note alone, then the answer, are taken as well
    assert api_http.post(url, json={"note": "almost"}).status_code == 200
    assert api_http.post(url, json={"output": "done"}).json()["step_status"] == "succeeded"
    assert fetch(StepRun, steps["fetch"]).response_body == '"done"'


def _deadline(step_run_id: int, seconds_from_now: float) -> None:
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.id == step_run_id)
            .values(wait_until=now() + timedelta(seconds=seconds_from_now))
        )


def test_a_callback_after_the_steps_timeout_is_gone(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given an async step whose deadline has just passed (not yet ended by its run)
    execution_id, steps = parked_run()
    url = callback_of(steps["fetch"])
    _deadline(steps["fetch"], -0.001)
    before = writes()
    # when its agent answers, or reports progress
    for body in ({"output": 1}, {"error": "x"}, {"progress": 99}):
        # then it is too late: 410, nothing written, the run not woken
        _refused(api_http.post(url, json=body), 410, "too late")
    assert writes() == before and wake_ups(redis_client, execution_id) == 0
    # and once the engine ended the step by its timeout, it is still 410 (not "answered")
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.id == steps["fetch"])
            .values(status=StepStatus.FAILED, finished_at=StepRun.wait_until)
        )
    _refused(api_http.post(url, json={"output": 1}), 410, "ended by its timeout")


def test_an_expired_callback_url_is_gone(api_http: httpx.Client) -> None:
    _, steps = parked_run()
    before = writes()
    expired = callback_of(steps["fetch"], valid_s=-1)
    _refused(api_http.post(expired, json={"output": 1}), 410, "expired")
    assert writes() == before


def test_a_forged_callback_proves_nothing_and_writes_nothing(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a parked run's async step
    execution_id, steps = parked_run()
    real = callback_of(steps["fetch"]).rsplit("/", 1)[1]
    until = now() + timedelta(hours=1)
    tampered = real[:60] + ("A" if real[60] != "A" else "B") + real[61:]
    forged = [
        "not-a-token",
        tampered,
        real[:-8],
        # sealed with a key this deployment does not have
        seal_token(SecretBox((new_key(),)), WaitPurpose.CALLBACK, steps["fetch"], until),
        # one of ours, but made to decide an approval: never a callback
        approval_token(get_settings(), steps["fetch"], until),
    ]
    admin = bearer(make_token())
    before = writes()
    for token in forged:
        # when a callback comes with it
        answer = api_http.post(f"/v1/callbacks/{token}", json={"output": "forged"})
        # then it is refused as unauthenticated, with the callback's challenge
        problem = _refused(answer, 401, "not valid")
        assert problem["title"] == "The callback URL is not valid"
        assert answer.headers["www-authenticate"].startswith("Stepwise-Callback")
    # and an API token does not stand for the signed URL
    _refused(
        api_http.post(f"/v1/callbacks/{forged[0]}", json={"output": 1}, headers=admin), 401, ""
    )
    # and nothing was written, the run not woken
    assert writes() == before and wake_ups(redis_client, execution_id) == 0
    assert fetch(StepRun, steps["fetch"]).status == StepStatus.WAITING


def test_a_callback_for_a_cancelled_run_changes_nothing(
    api_http: httpx.Client, redis_client: Any
) -> None:
    # given a parked run cancelled by a person through the API
    execution_id, steps = parked_run()
    admin = bearer(make_token())
    cancelled = api_http.post(f"/v1/executions/{execution_id}/cancel", headers=admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    before = writes()
    # when its agent calls back
    answer = api_http.post(callback_of(steps["fetch"]), json={"output": "too late"})
    # then it is refused as the run was cancelled, and nothing changed
    _refused(answer, 409, "cancelled")
    assert writes() == before and wake_ups(redis_client, execution_id) == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "is not JSON"),
        (b'{"output": NaN}', 400, "is not JSON"),
        (b'{"output": 1e999}', 400, "is not JSON"),
        (b"\xff\xfe", 400, "is not JSON"),
        (b'[{"output": 1}]', 422, "must be a JSON object"),
        (b"{}", 422, "is empty"),
        (b'{"output": 1, "error": "x"}', 422, "comes alone"),
        (b'{"result": 1}', 422, "not a callback field"),
        (b'{"error": ""}', 422, "why the step failed"),
        (b'{"error": 42}', 422, "why the step failed"),
        (b'{"progress": 150}', 422, "from 0 to 100"),
        (b'{"progress": true}', 422, "from 0 to 100"),
        (b'{"note": 3}', 422, "must be a text"),
        (b'{"output": "a\\u0000b"}', 422, "NUL"),
        (b'{"note": "' + b"n" * 501 + b'"}', 422, "at most 500"),
        (b'{"output": ' + b"[" * 150 + b"]" * 150 + b"}", 422, "nest at most"),
        (b'{"output": "' + b"x" * 70_000 + b'"}', 413, "at most 64 KiB"),
    ],
)
def test_a_bad_body_is_refused_and_writes_nothing(
    api_http: httpx.Client, redis_client: Any, body: bytes, status: int, says: str
) -> None:
    # given a parked run's async step
    execution_id, steps = parked_run()
    url = callback_of(steps["fetch"])
    before = writes()
    # when its callback comes with a body that is not one of the three answers
    answer = api_http.post(url, content=body, headers={"Content-Type": "application/json"})
    # then it is refused, saying why, and nothing was written
    _refused(answer, status, says)
    assert writes() == before and wake_ups(redis_client, execution_id) == 0
    # and the URL still takes a good answer
    assert api_http.post(url, json={"output": 1}).status_code == 200


def test_a_callback_before_the_202_is_recorded_is_asked_again(api_http: httpx.Client) -> None:
    # given an async step whose call is still recorded as at the agent (its 202 not stored)
    _, steps = parked_run(status=ExecutionStatus.RUNNING)
    with session_scope() as session:
        session.execute(
            update(StepRun)
            .where(StepRun.id == steps["fetch"])
            .values(status=StepStatus.RUNNING, wait=None, wait_until=None)
        )
    url = callback_of(steps["fetch"])
    before = writes()
    # when the agent calls back at once, then it is asked to send it again in a second
    answer = api_http.post(url, json={"output": 1})
    _refused(answer, 503, "send the callback again")
    assert answer.headers["retry-after"] == "1"
    assert writes() == before


def test_a_callback_past_its_steps_calls_a_minute_is_refused(
    db: None, redis_client: Any, tmp_path: Path
) -> None:
    # given the Procfile's api with 2 calls a minute, and two parked runs' async steps
    _, ours = parked_run()
    _, other = parked_run()
    api = start_api(tmp_path, STEPWISE_API_RATE_PER_MINUTE="2")
    try:
        # (not in the last seconds of Redis's minute: the calls fall in one window)
        wait_for(lambda: redis_client.time()[0] % 60 < 50, timeout=15, message="a fresh minute")
        with httpx.Client(base_url=api.url, timeout=10) as client:
            url = callback_of(ours["fetch"])
            # when our step's agent reports progress twice, then answers
            for note in ("one", "two"):
                assert client.post(url, json={"note": note}).status_code == 200
            before = writes()
            refused = client.post(url, json={"output": 1})
            # then the third is refused with Retry-After, and nothing is written
            _refused(refused, 429, "try again in")
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert writes() == before
            # and another step's callback is not held back by ours; a forged one counts for none
            assert client.post("/v1/callbacks/forged", json={"output": 1}).status_code == 401
            theirs = client.post(callback_of(other["fetch"]), json={"output": 1})
            assert theirs.status_code == 200, theirs.text
    finally:
        api.stop()
