"""The REST API against the OpenAPI schema it serves, with a token (schemathesis).

Every operation answers its documented example with a success that matches the
schema; then every operation gets generated requests (valid and invalid), both on
random ids and on real objects of the token's workspace: none may answer 5xx,
every answer must match the schema (status, content type, body), every error must
be problem+json, and a refused request must write nothing.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.settings import get_settings
from core.vocabulary import ExecutionStatus
from service import channels, secrets, webhooks
from service.webhooks import SECRET_HEADER
from testkit.api import bearer, make_token, writes
from testkit.factories import (
    ADMIN,
    CHANNEL_URL,
    add_executions,
    make_automation,
    make_schedule,
)
from testkit.waits import callback_of, parked_run

PROBLEM = "application/problem+json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# What an operation needs to succeed that the other operations' objects do not give it.
NEEDS = {
    ("POST", "/v1/executions/{execution_id}/cancel"): {"run": ExecutionStatus.QUEUED},
    ("POST", "/v1/automations/{automation_id}/hook"): {"webhook": False},
    ("POST", "/v1/automations/{automation_id}/webhook"): {"webhook": False},
    ("POST", "/v1/executions/{execution_id}/steps/{step_key}/approve"): {"parked": True},
    ("POST", "/v1/executions/{execution_id}/steps/{step_key}/reject"): {"parked": True},
}


@pytest.fixture
def auth(db: None, redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An admin token (with room for every generated call in its minute)."""
    monkeypatch.setenv("STEPWISE_API_RATE_PER_MINUTE", "100000")
    get_settings.cache_clear()
    yield bearer(make_token(name="fuzz"))
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse every connection this process opens beyond loopback (a channel's test-send
    contacts its URL: a generated channel must not reach anything outside this machine);
    the test then checks none was tried."""
    tried: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        if address[0] in ("127.0.0.1", "::1", "localhost"):
            return True
        tried.append(str(address))
        return False

    def connect(sock: socket.socket, address: Any) -> None:
        if not allowed(sock, address):
            raise ConnectionRefusedError(f"test: no connection beyond loopback ({address})")
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        return real_connect_ex(sock, address) if allowed(sock, address) else 111

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield tried


def _objects(
    redis_client: Any,
    run: ExecutionStatus = ExecutionStatus.FAILED,
    webhook: bool = True,
    parked: bool = False,
) -> tuple[dict[str, str], str]:
    """Fresh objects of the token's workspace, one for each id a path may name, and the
    webhook's secret. `parked`: the execution is a run parked on an approval (`step_key`)."""
    automation_id = make_automation()
    schedule_id = make_schedule(automation_id)
    (run_id,) = add_executions(automation_id, [{"status": run}])
    waiting_id, waiting_steps = parked_run()
    if parked:
        run_id = waiting_id
    channel = channels.add_channel(f"c-{uuid.uuid4()}", CHANNEL_URL, actor=ADMIN)
    secret = f"S_{uuid.uuid4().hex}"
    secrets.set_secret(secret, "value-of-a-secret", actor=ADMIN)
    made = webhooks.enable_webhook(automation_id, actor=ADMIN)
    if not webhook:
        webhooks.disable_webhook(automation_id, actor=ADMIN)
    from tasks.actors import run_execution

    letter = str(uuid.uuid4())
    redis_client.zadd("dramatiq:default.XQ", {letter: time.time() * 1000})
    redis_client.hset(
        "dramatiq:default.XQ.msgs", letter, run_execution.message(str(run_id)).encode()
    )
    ids = {
        "automation_id": automation_id,
        "schedule_id": schedule_id,
        "execution_id": run_id,
        "channel_id": channel.id,
        "hook_id": made.info.id,
        "webhook_id": made.info.id,
        "queue": "default",
        "message_id": letter,
        "name": secret,
        "step_key": "ok",
        "token": callback_of(waiting_steps["fetch"]).rsplit("/", 1)[1],
    }
    return {name: str(value) for name, value in ids.items()}, made.secret


def _path_ids(operation: Any, ids: dict[str, str]) -> dict[str, str]:
    return {p.name: ids[p.name] for p in operation.path_parameters}


def _example(spec: dict[str, Any], method: str, path: str) -> Any:
    """The request body documented for the operation (None when it takes none)."""
    content = spec["paths"][path][method.lower()].get("requestBody", {}).get("content", {})
    media = content.get("application/json")
    if media is None:
        return None
    if "example" in media:
        return media["example"]
    schema = media["schema"]
    schema = next((s for s in schema.get("anyOf", [schema]) if "$ref" in s), schema)
    name = schema["$ref"].rsplit("/", 1)[1]
    (example,) = spec["components"]["schemas"][name]["examples"]
    return example


READINESS = "/ready"


def _schema() -> Any:
    from api.app import create_app

    # /ready answers 503 by design while no scheduler ticks (none does here): it is
    # driven through its failures in tests/test_health.py instead.
    return schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(path=READINESS)


def test_every_operation_answers_its_documented_example_as_its_schema_says(
    auth: dict[str, str], redis_client: Any, loopback_only: list[str]
) -> None:
    # given the schema the API serves, and its example of each request body
    schema = _schema()
    spec = schema.raw_schema
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        key = (operation.method.upper(), operation.path)
        ids, secret = _objects(redis_client, **NEEDS.get(key, {}))
        body = _example(spec, operation.method, operation.path)
        if isinstance(body, dict) and "automation_id" in body:
            body = {**body, "automation_id": ids["automation_id"]}
        if isinstance(body, dict) and "from" in body:  # a recent range: history is kept 90 days
            body = {"from": (hour - timedelta(hours=1)).isoformat(), "to": hour.isoformat()}
        headers = {**auth, SECRET_HEADER: secret}
        case = operation.Case(
            path_parameters=_path_ids(operation, ids),
            headers=headers,
            **({} if body is None else {"body": body, "media_type": "application/json"}),
        )
        # when it is sent on real objects of the token's workspace
        response = case.call(headers=headers)
        # then it succeeds, and its answer is the one the schema describes
        assert response.status_code < 300, (key, response.text)
        case.validate_response(response, checks=CHECKS)
    paths = {path: ops for path, ops in spec["paths"].items() if path != READINESS}
    assert len(operations) == sum(len(ops) for ops in paths.values())
    assert loopback_only == []


def _fuzz(case: Any, auth: dict[str, str], seen: list[int]) -> None:
    before = writes()
    response = case.call(headers=dict(auth))
    seen.append(response.status_code)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert response.headers["content-type"] == [PROBLEM], response.text
        assert writes() == before, f"{case.method} {case.path} wrote rows and answered an error"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_its_schema_under_generated_input(
    auth: dict[str, str], redis_client: Any, loopback_only: list[str], mode: GenerationMode
) -> None:
    # given the schema the API serves
    operations = [result.ok() for result in _schema().get_all_operations()]
    assert len(operations) >= 38
    check = settings(
        max_examples=5,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for operation in operations:
        # when each operation gets generated requests with an admin token, on random ids
        # and on real objects of its workspace
        # (an approval's run parked on it, so that a decision reaches its step)
        key = (operation.method.upper(), operation.path)
        ids, _ = _objects(redis_client, parked=NEEDS.get(key, {}).get("parked", False))
        real = _path_ids(operation, ids)
        for path_parameters in ({}, real) if real else ({},):
            seen: list[int] = []
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            try:
                # then each answer keeps to the schema, errors are problem+json, write nothing
                check(given(case=strategy)(_fuzz))(auth=auth, seen=seen)
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == GenerationMode.NEGATIVE
                continue
            # and real ids reach past the lookup: the fuzz exercises the operation itself
            if path_parameters and mode == GenerationMode.POSITIVE:
                assert set(seen) != {404}, (operation.method, operation.path, seen)
    # and no call tried to reach beyond this machine
    assert loopback_only == []
