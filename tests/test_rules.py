"""Every input rule of the core, through every entry point that takes the input.

Each rule is tried through the REST API (with a token), the dashboard's form
functions (`dashboard.forms`, then what the page calls on Save) and `stepwise apply`
(a definitions file). Each must refuse with the same field and the same message, the
core's, and write nothing. Where an entry point cannot express an input (the dashboard
has no "kind" to mistype), the test names the entry points it runs on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from core.automation import Step, validate_automation
from core.cron import normalize_cron
from core.errors import ValidationFailed
from core.limits import (
    MAX_CATCHUP_WINDOW_S,
    MAX_CONCURRENCY,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_INPUT_BYTES,
    MAX_JITTER_S,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_PAUSE_NOTE,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MAX_TEXT,
    MAX_URL,
    MIN_INTERVAL_S,
    MIN_RATE_PER_S,
    MIN_STEP_TIMEOUT_S,
)
from core.schedule import parse_schedule
from core.settings import get_settings
from core.text import UNSTORABLE
from core.vocabulary import MisfirePolicy, OverlapPolicy, ScheduleKind, one_of
from dashboard import forms
from service import automations, definitions, schedules
from stepwise import defs
from testkit.api import make_token, writes
from testkit.factories import (
    ADMIN,
    automation_input,
    make_automation,
    make_schedule,
)

Refusal = list[tuple[str, str]]  # (field, message) of each error, as the core gives them

STEP = {"name": "one", "message": "do part one"}
AUTOMATION: dict[str, Any] = {
    "name": "Rules",
    "agent_url": "http://127.0.0.1:9/agent",
    "steps": [STEP],
}
SCHEDULE: dict[str, Any] = {"kind": "interval", "interval_s": 3600, "timezone": "UTC"}
NUL, SURROGATE = "a\x00b", "a\ud800b"


def _refused(attempt: Callable[[], object]) -> Refusal:
    with pytest.raises(ValidationFailed) as refused:
        attempt()
    return [(e.field, e.message) for e in refused.value.errors]


# --- the entry points --------------------------------------------------------------------


class Api:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def _post(self, path: str, body: dict[str, Any]) -> Refusal:
        # json.dumps escapes what UTF-8 cannot carry (lone surrogates), as a client must.
        answer = self.client.post(path, content=json.dumps(body), headers=self.headers)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert {"type", "title", "status", "detail"} <= set(problem)
        return [(e["field"], e["message"]) for e in problem["errors"]]

    def automation(self, values: dict[str, Any]) -> Refusal:
        return self._post("/v1/automations", values)

    def schedule(self, automation_id: uuid.UUID, values: dict[str, Any]) -> Refusal:
        return self._post("/v1/schedules", {**values, "automation_id": str(automation_id)})

    def pause(self, schedule_id: uuid.UUID, note: str) -> Refusal:
        return self._post(f"/v1/schedules/{schedule_id}/pause", {"note": note})


class Dashboard:
    """The form functions, then the call the page makes on Save (a refused schedule
    form is never saved: the dialog checks it first, `schedule_dialog.check`)."""

    def automation(self, values: dict[str, Any]) -> Refusal:
        rows = [{"order": n, **step} for n, step in enumerate(values["steps"], start=1)]
        form = forms.AutomationForm(
            name=values["name"],
            agent_url=values["agent_url"],
            steps=forms.steps_from_rows(rows),
            description=values.get("description", ""),
            project_context=values.get("project_context", ""),
            timeout=values.get("step_timeout_s", 30),
            retries=values.get("max_retries", 3),
            concurrency=values.get("concurrency_limit"),
            rate=values.get("rate_limit_per_s"),
            headers_text=forms.headers_text(values.get("request_headers", {})),
        )

        def save() -> None:
            automations.create(forms.automation_input(form), actor=ADMIN)

        return _refused(save)

    def schedule(self, automation_id: uuid.UUID, values: dict[str, Any]) -> Refusal:
        form = _schedule_form(values)
        retention = get_settings().retention_days
        return _refused(
            lambda: parse_schedule(forms.schedule_input(form), retention_days=retention)
        )

    def pause(self, schedule_id: uuid.UUID, note: str) -> Refusal:
        def pause() -> None:
            schedules.pause(schedule_id, actor=ADMIN, note=note)

        return _refused(pause)


def _schedule_form(values: dict[str, Any]) -> forms.ScheduleForm:
    """The schedule dialog's inputs for `values` (times as wall times in the zone)."""
    zone = values.get("timezone", "UTC")

    def wall(name: str) -> Any:
        if values.get(name) is None:
            return None
        local = datetime.fromisoformat(values[name]).astimezone(forms.zone_or_utc(zone))
        return local.date(), local.time().replace(tzinfo=None)

    timing = {
        ScheduleKind.CRON: forms.CUSTOM_CRON,
        ScheduleKind.INTERVAL: forms.INTERVAL,
        ScheduleKind.ONCE: forms.ONCE,
    }[values["kind"]]
    return forms.ScheduleForm(
        timing=timing,
        cron_expr=values.get("cron_expr") or "",
        interval_s=values.get("interval_s", 3600),
        run_at=wall("run_at"),
        timezone=zone,
        start=wall("start_at"),
        end=wall("end_at"),
        max_runs=values.get("max_runs") or 0,
        misfire_policy=values.get("misfire_policy", MisfirePolicy.RUN_ONCE),
        catchup_window_min=values.get("catchup_window_s", 3600) // 60,
        overlap_policy=values.get("overlap_policy", OverlapPolicy.SKIP),
        jitter_s=values.get("jitter_s", 0),
        input_text="" if values.get("input") is None else json.dumps(values["input"]),
    )


class Apply:
    """`stepwise apply -f FILE`: one transaction for the file, as the command runs it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _apply(self, automation: dict[str, Any]) -> Refusal:
        path = self.folder / f"{uuid.uuid4().hex}.yaml"
        path.write_text(yaml.safe_dump({"automations": [automation]}), encoding="utf-8")
        with pytest.raises(defs.DefinitionError) as refused:
            definitions.apply(partial(defs.apply, path=str(path)), person=ADMIN.name)
        cause = refused.value.__cause__
        assert isinstance(cause, ValidationFailed), refused.value
        for error in cause.errors:  # the person reads each one, by the file's field name
            assert f"{error.field}: {error.message}" in str(refused.value)
        return [(e.field, e.message) for e in cause.errors]

    def automation(self, values: dict[str, Any]) -> Refusal:
        return self._apply(values)

    def schedule(self, automation_id: uuid.UUID, values: dict[str, Any]) -> Refusal:
        return self._apply({**AUTOMATION, "schedules": [values]})

    def pause(self, schedule_id: uuid.UUID, note: str) -> Refusal:
        paused = {**SCHEDULE, "enabled": False, "pause_note": note}
        return self._apply({**AUTOMATION, "schedules": [paused]})


Entry = Api | Dashboard | Apply


class Refuses:
    """One entry point, each attempt checked to have written nothing."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self._automation_id: uuid.UUID | None = None
        self._schedule_id: uuid.UUID | None = None

    def automation(self, **values: Any) -> Refusal:
        before = writes()
        refusal = self.entry.automation({**AUTOMATION, **values})
        assert writes() == before
        return refusal

    def schedule(self, **values: Any) -> Refusal:
        automation_id = self._existing_automation()
        before = writes()
        refusal = self.entry.schedule(automation_id, {**SCHEDULE, **values})
        assert writes() == before
        return refusal

    def pause(self, note: str) -> Refusal:
        if self._schedule_id is None:
            self._schedule_id = make_schedule(self._existing_automation())
        before = writes()
        refusal = self.entry.pause(self._schedule_id, note)
        assert writes() == before
        return refusal

    def _existing_automation(self) -> uuid.UUID:
        """The automation the schedules are for (the file's, in `stepwise apply`)."""
        if self._automation_id is None:
            self._automation_id = make_automation(**_factory(AUTOMATION))
        return self._automation_id


def _factory(values: dict[str, Any]) -> dict[str, Any]:
    """The file's automation as `testkit.factories.automation_input` takes it."""
    return {**values, "steps": tuple(Step(**step) for step in values["steps"])}


@pytest.fixture(params=["api", "dashboard", "apply"])
def refuses(request: pytest.FixtureRequest, db: None, tmp_path: Path) -> Iterator[Refuses]:
    if request.param == "dashboard":
        yield Refuses(Dashboard())
    elif request.param == "apply":
        yield Refuses(Apply(tmp_path))
    else:
        client = request.getfixturevalue("client")
        yield Refuses(Api(client, make_token(name="rules")))


def only(*entry_points: str) -> pytest.MarkDecorator:
    """Run a rule's test on these entry points only (the others cannot express its input)."""
    return pytest.mark.parametrize("refuses", entry_points, indirect=True)


# --- text PostgreSQL cannot store ----------------------------------------------------------


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["NUL", "lone surrogate"])
def test_text_postgresql_cannot_store_is_refused_in_every_field(refuses: Refuses, bad: str) -> None:
    assert refuses.automation(name=bad) == [("name", UNSTORABLE)]
    assert refuses.automation(description=bad, project_context=bad) == [
        ("description", UNSTORABLE),
        ("project_context", UNSTORABLE),
    ]
    assert refuses.automation(agent_url=f"http://127.0.0.1:9/{bad}") == [("agent_url", UNSTORABLE)]
    assert refuses.automation(steps=[STEP, {"name": "two", "message": bad}]) == [
        ("steps", f"step 2's message {UNSTORABLE}")
    ]
    assert refuses.automation(request_headers={"X-Team": bad}) == [
        ("request_headers", f"header 1's value {UNSTORABLE}")
    ]
    assert refuses.schedule(timezone=bad) == [("timezone", UNSTORABLE)]
    assert refuses.schedule(kind="cron", cron_expr=f"* * * * {bad}") == [("cron_expr", UNSTORABLE)]
    assert refuses.schedule(misfire_policy=bad) == [("misfire_policy", UNSTORABLE)]
    assert refuses.schedule(input={"key": bad}) == [("input", UNSTORABLE)]
    assert refuses.schedule(input={bad: 1}) == [("input", UNSTORABLE)]
    assert refuses.pause(bad) == [("note", UNSTORABLE)]


@only("api")
def test_a_create_with_an_idempotency_key_refuses_broken_unicode_the_same_way(
    refuses: Refuses,
) -> None:
    # the key binds the request's body, which JSON cannot encode: still the core's refusal
    assert isinstance(refuses.entry, Api)
    refuses.entry.headers["Idempotency-Key"] = "create-once"
    assert refuses.automation(name=SURROGATE) == [("name", UNSTORABLE)]


# --- automations ----------------------------------------------------------------------------


@only("api", "dashboard")  # a definitions file names each automation: apply's own check
def test_an_automation_needs_a_name(refuses: Refuses) -> None:
    assert refuses.automation(name="  ") == [("name", "is required")]


def test_names_and_texts_have_a_length_limit(refuses: Refuses) -> None:
    assert refuses.automation(name="n" * (MAX_NAME + 1)) == [
        ("name", f"is longer than {MAX_NAME} characters")
    ]
    assert refuses.automation(project_context="c" * (MAX_TEXT + 1)) == [
        ("project_context", f"is longer than {MAX_TEXT} characters")
    ]
    assert refuses.automation(description="d" * (MAX_TEXT + 1)) == [
        ("description", f"is longer than {MAX_TEXT} characters")
    ]


def test_an_automation_has_1_to_50_steps(refuses: Refuses) -> None:
    assert refuses.automation(steps=[]) == [("steps", "add at least one step")]
    assert refuses.automation(steps=[STEP] * (MAX_STEPS + 1)) == [
        ("steps", f"at most {MAX_STEPS} steps (got {MAX_STEPS + 1})")
    ]


def test_each_step_has_a_message_and_bounded_texts(refuses: Refuses) -> None:
    assert refuses.automation(steps=[STEP, {"name": "two", "message": " "}]) == [
        ("steps", "step 2 has no message")
    ]
    assert refuses.automation(steps=[{"name": "one", "message": "m" * (MAX_MESSAGE + 1)}]) == [
        ("steps", f"step 1's message is over {MAX_MESSAGE} characters")
    ]
    assert refuses.automation(steps=[{"name": "n" * (MAX_NAME + 1), "message": "m"}]) == [
        ("steps", f"step 1's name is over {MAX_NAME} characters")
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "is required"),
        ("ftp://example.com/agent", "must start with http:// or https:// (got 'ftp')"),
        ("example.com/agent", "must start with http:// or https:// (got 'no scheme')"),
        ("http://example.com/" + "a" * MAX_URL, f"is longer than {MAX_URL} characters"),
        ("http://example.com/my agent", "must not contain spaces (encode them as %20)"),
        ("http://example.com:99999/", "has a port that is not a number between 1 and 65535"),
        ("http:///agent", "has no host name"),
        ("http://exa_mple-.com/", "has a host name that cannot exist ('exa_mple-.com')"),
        (
            "http://user:pw@example.com/",
            "must not contain a user name or password: they would be stored and shown "
            "with every run",
        ),
    ],
    ids=["empty", "ftp", "no scheme", "too long", "space", "port", "no host", "host", "password"],
)
def test_the_agent_url_is_a_plain_http_or_https_address(
    refuses: Refuses, url: str, message: str
) -> None:
    assert refuses.automation(agent_url=url) == [("agent_url", message)]


def test_an_internal_agent_address_needs_the_administrators_allowance(refuses: Refuses) -> None:
    # the tests allow only 127.0.0.1 (tests/conftest.py): the metadata service is refused
    url = "http://169.254.169.254/latest"
    core = _refused(
        lambda: validate_automation(
            automation_input(agent_url=url), egress=get_settings().egress_policy()
        )
    )
    assert core[0][0] == "agent_url" and "STEPWISE_AGENT_ALLOW" in core[0][1]
    assert refuses.automation(agent_url=url) == core


def test_request_headers_are_few_valid_and_keep_credentials_in_secrets(refuses: Refuses) -> None:
    many = {f"X-H{n}": "v" for n in range(MAX_HEADERS + 1)}
    assert refuses.automation(request_headers=many) == [
        ("request_headers", f"at most {MAX_HEADERS} headers")
    ]
    assert refuses.automation(request_headers={"Bad Name": "v"}) == [
        ("request_headers", "'Bad Name' is not a header name")
    ]
    assert refuses.automation(request_headers={"Host": "v"}) == [
        ("request_headers", "Host is set by Stepwise and cannot be changed")
    ]
    assert refuses.automation(request_headers={"X-Long": "v" * (MAX_HEADER_VALUE + 1)}) == [
        ("request_headers", f"X-Long's value is over {MAX_HEADER_VALUE} characters")
    ]
    assert refuses.automation(request_headers={"Authorization": "Bearer abc"}) == [
        (
            "request_headers",
            "Authorization carries a credential: save it as a workspace secret and write "
            "{{ secret.NAME }} here (the value is then never stored or shown)",
        )
    ]


@only("api", "apply")  # the dashboard's "Name: value" lines cannot hold a line break
def test_a_header_value_is_one_line(refuses: Refuses) -> None:
    assert refuses.automation(request_headers={"X-Team": "a\r\nX-Evil: 1"}) == [
        ("request_headers", "X-Team's value must be on one line")
    ]


def test_timeouts_retries_and_flow_control_are_bounded(refuses: Refuses) -> None:
    assert refuses.automation(step_timeout_s=MAX_STEP_TIMEOUT_S + 1) == [
        (
            "step_timeout_s",
            f"must be between {MIN_STEP_TIMEOUT_S} and {MAX_STEP_TIMEOUT_S} seconds",
        )
    ]
    assert refuses.automation(max_retries=MAX_RETRIES + 1) == [
        ("max_retries", f"must be between 0 and {MAX_RETRIES}")
    ]
    assert refuses.automation(concurrency_limit=0) == [
        ("concurrency_limit", f"must be between 1 and {MAX_CONCURRENCY}, or empty (no limit)")
    ]
    assert refuses.automation(rate_limit_per_s=MAX_RATE_PER_S * 2) == [
        (
            "rate_limit_per_s",
            f"must be between {MIN_RATE_PER_S} and {MAX_RATE_PER_S} calls per second, "
            "or empty (no limit)",
        )
    ]


# --- schedules ------------------------------------------------------------------------------


@only("api", "apply")  # the dashboard offers its timings as choices
def test_a_schedule_is_cron_interval_or_once(refuses: Refuses) -> None:
    assert refuses.schedule(kind="hourly") == [
        ("kind", f"unknown kind 'hourly'; use one of {one_of(ScheduleKind)}")
    ]


def test_a_cron_schedule_needs_a_valid_expression(refuses: Refuses) -> None:
    assert refuses.schedule(kind="cron", cron_expr="") == [
        ("cron_expr", "is required for a cron schedule")
    ]
    core = _refused(lambda: normalize_cron("61 * * * *"))
    assert core == [
        ("cron_expr", "'61 * * * *' is not a valid cron expression: minute 61 is out of range 0-59")
    ]
    assert refuses.schedule(kind="cron", cron_expr="61 * * * *") == core


def test_the_timezone_is_an_iana_name(refuses: Refuses) -> None:
    assert refuses.schedule(timezone="Mars/Olympus") == [
        ("timezone", "unknown timezone 'Mars/Olympus'; use an IANA name such as Europe/Berlin")
    ]


def test_an_interval_is_at_least_10_seconds(refuses: Refuses) -> None:
    assert refuses.schedule(interval_s=MIN_INTERVAL_S - 1) == [
        ("interval_s", f"must be at least {MIN_INTERVAL_S} seconds")
    ]


@only("api", "apply")  # the dashboard's interval input always holds a number
def test_an_interval_schedule_needs_its_interval(refuses: Refuses) -> None:
    assert refuses.schedule(interval_s=None) == [
        ("interval_s", "is required for an interval schedule")
    ]


def test_the_end_comes_after_the_start(refuses: Refuses) -> None:
    assert refuses.schedule(
        start_at="2030-01-02T00:00:00+00:00", end_at="2030-01-01T00:00:00+00:00"
    ) == [("end_at", "must be after the start")]


@only("api", "apply")  # the dashboard's dates are wall times in the chosen zone
def test_times_carry_their_timezone(refuses: Refuses) -> None:
    assert refuses.schedule(start_at="2030-01-01T00:00:00") == [
        ("start_at", "must include a timezone (got a naive datetime)")
    ]


def test_a_one_time_schedule_runs_once_within_its_bounds(refuses: Refuses) -> None:
    assert refuses.schedule(kind="once") == [("run_at", "is required for a one-time schedule")]
    assert refuses.schedule(
        kind="once",
        run_at="2030-01-05T00:00:00+00:00",
        start_at="2030-01-01T00:00:00+00:00",
        end_at="2030-01-02T00:00:00+00:00",
    ) == [("run_at", "must lie between the start and the end")]


def test_max_runs_is_at_least_one(refuses: Refuses) -> None:
    # -1: the dashboard's 0 means "no limit"
    assert refuses.schedule(max_runs=-1) == [("max_runs", "must be at least 1")]


def test_the_policies_are_words_of_the_vocabulary(refuses: Refuses) -> None:
    assert refuses.schedule(misfire_policy="later") == [
        ("misfire_policy", f"must be one of {one_of(MisfirePolicy)}")
    ]
    assert refuses.schedule(overlap_policy="queue") == [
        ("overlap_policy", f"must be one of {one_of(OverlapPolicy)}")
    ]


def test_catch_up_window_and_jitter_are_bounded(refuses: Refuses) -> None:
    cap = min(MAX_CATCHUP_WINDOW_S, get_settings().retention_days * 86400)
    assert refuses.schedule(catchup_window_s=-60) == [
        ("catchup_window_s", f"must be between 0 and {cap} seconds")
    ]
    assert refuses.schedule(jitter_s=MAX_JITTER_S + 1) == [
        ("jitter_s", f"must be between 0 and {MAX_JITTER_S} seconds")
    ]


def test_a_schedules_input_is_a_json_object_of_at_most_64_kib(refuses: Refuses) -> None:
    assert refuses.schedule(input={"a": "x" * MAX_INPUT_BYTES}) == [
        ("input", f"must be at most {MAX_INPUT_BYTES // 1024} KiB of JSON")
    ]


@only("dashboard", "apply")  # the API's schema types `input` as an object: JSON says it
def test_a_schedules_input_is_an_object(refuses: Refuses) -> None:
    assert refuses.schedule(input=[1, 2]) == [
        ("input", 'must be a JSON object, like {"key": "value"}')
    ]


def test_a_pause_note_is_short(refuses: Refuses) -> None:
    long = "n" * (MAX_PAUSE_NOTE + 1)
    assert refuses.pause(long) == [
        ("note", f"must be at most {MAX_PAUSE_NOTE} characters (got {len(long)})")
    ]
