"""The REST API's limits and housekeeping: the per-token rate limit through the real api
process, old Idempotency-Keys purged, and the docs served without a third-party request."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from core.limits import MAX_API_BODY_BYTES
from core.settings import get_settings
from db.models import IdempotencyKey
from db.session import session_scope
from stepwise.embedded import free_port
from tasks import periodic
from testkit.api import ApiProcess, api_client, bearer, make_token, start_api, writes
from testkit.browser import DESKTOP, PHONE, SHOTS, outside_requests, window
from testkit.factories import make_workspace
from testkit.waiting import wait_for

PROBLEM = "application/problem+json"
AUTOMATION = {
    "name": "Nightly report",
    "agent_url": "http://127.0.0.1:9/agent",
    "steps": [{"name": "one", "message": "do part one"}],
}


# --- rate limit ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_token_past_its_calls_per_minute_gets_429_with_retry_after_and_writes_nothing(
    db: None, redis_client: Any, tmp_path: Path
) -> None:
    # given the Procfile's api with 3 calls per minute and token, and two tokens
    ours, other = make_token(name="ours"), make_token(name="other")
    api = start_api(tmp_path, STEPWISE_API_RATE_PER_MINUTE="3")
    try:
        # (not in the last seconds of Redis's minute: the 4 calls fall in one window)
        wait_for(lambda: redis_client.time()[0] % 60 < 50, timeout=15, message="a fresh minute")
        with httpx.Client(base_url=api.url, timeout=10) as http:
            # when our token makes its 3 calls
            for _ in range(3):
                assert http.get("/v1/automations", headers=bearer(ours)).status_code == 200
            # then its 4th, a create, is refused with Retry-After, and writes nothing
            before = writes()
            refused = http.post("/v1/automations", json=AUTOMATION, headers=bearer(ours))
            assert refused.status_code == 429, refused.text
            assert refused.headers["content-type"] == PROBLEM
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.json()["type"] == "urn:stepwise:problem:rate-limited"
            assert writes() == before
            # and another token is not held back by ours
            made = http.post("/v1/automations", json=AUTOMATION, headers=bearer(other))
            assert made.status_code == 201, made.text
            # and the docs and health need no token and count against none
            assert http.get("/health").status_code == 200
            assert http.get("/openapi.json").status_code == 200
    finally:
        api.stop()
    assert ours not in api.log() and other not in api.log()


def test_without_redis_the_limit_lets_calls_through_and_says_so_in_the_log(
    db: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from api import ratelimit

    # given a Redis that cannot be reached (a closed local port) and a limit of 1
    token = make_token()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("STEPWISE_API_RATE_PER_MINUTE", "1")
    get_settings.cache_clear()
    ratelimit._script.cache_clear()
    try:
        with api_client() as client, caplog.at_level("WARNING", "api.ratelimit"):
            # when the token calls twice, then both calls are answered
            for _ in range(2):
                assert client.get("/v1/automations", headers=bearer(token)).status_code == 200
        # and the log says the limit was not checked, without the token
        assert "rate limit not checked, Redis unreachable" in caplog.text
        assert token not in caplog.text
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        ratelimit._script.cache_clear()


def test_the_limit_is_documented_for_every_token_route_and_the_webhook(
    db: None, redis_client: Any
) -> None:
    with api_client() as client:
        schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/health", "/ready"):  # no token, no limit
                assert "429" not in operation["responses"], (method, path)
            else:
                limited = operation["responses"]["429"]
                assert PROBLEM in limited["content"], (method, path)
                assert limited["headers"]["Retry-After"]["schema"]["type"] == "integer"


# --- bodies: the token first, then a size limit ----------------------------------------------

HUGE = 100 * 1024 * 1024  # what the body claims; the test sends only its first MiB


def _answer_while_sending(url: str, path: str, headers: dict[str, str], length: int) -> str:
    """POST `path` declaring a `length`-byte JSON body, send its first MiB, and read the
    status line the server answers with while the rest is still unsent."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{head}\r\n".encode()
        )
        conn.sendall(b"[" * (1024 * 1024))
        return conn.recv(4096).decode("latin-1").split("\r\n")[0]


@pytest.mark.parametrize("path", ["/v1/automations", "/v1/schedules", "/v1/channels"])
def test_a_body_without_a_token_is_refused_before_it_is_read(
    api_process: ApiProcess, path: str
) -> None:
    # when a caller with no token starts sending a 100 MB body
    status = _answer_while_sending(api_process.url, path, {}, HUGE)
    # then the API answers 401 with 99 MB still unsent: it read none of it
    assert status == "HTTP/1.1 401 Unauthorized"
    # and a 100k-deep body sent whole is refused for the token, not parsed
    deep = b"[" * 100_000 + b"]" * 100_000
    answered = httpx.post(f"{api_process.url}{path}", content=deep, timeout=30)
    assert answered.status_code == 401, answered.text


def test_a_body_over_the_limit_is_refused_with_413_and_writes_nothing(
    api_process: ApiProcess, db: None, redis_client: Any
) -> None:
    token = make_token()
    before = writes()
    # a declared length over the limit: refused before reading
    status = _answer_while_sending(api_process.url, "/v1/automations", bearer(token), HUGE)
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    # a chunked body that streams past it: refused once it has
    over = (b"[" * (MAX_API_BODY_BYTES + 1) for _ in range(1))
    answered = httpx.post(
        f"{api_process.url}/v1/automations", content=over, headers=bearer(token), timeout=30
    )
    assert answered.status_code == 413, answered.text
    assert answered.headers["content-type"] == PROBLEM
    assert writes() == before
    # a deep body with a token is bad input, not a crash
    deep = b"[" * 100_000 + b"]" * 100_000
    answered = httpx.post(
        f"{api_process.url}/v1/automations", content=deep, headers=bearer(token), timeout=30
    )
    assert answered.status_code in (400, 422), answered.text


# --- idempotency keys -------------------------------------------------------------------------


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STEPWISE_RETENTION_BATCH", "2")
    monkeypatch.setenv("STEPWISE_IDEMPOTENCY_RETENTION_H", "24")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _keys() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(IdempotencyKey.key)))


def test_housekeeping_forgets_idempotency_keys_past_their_retention_in_batches(
    db: None, redis_client: Any, small_batches: None
) -> None:
    token = make_token()
    with api_client() as client:
        # given five creates made with keys, three of them made 25 hours ago
        made = {}
        for i in range(5):
            answer = client.post(
                "/v1/automations",
                json={**AUTOMATION, "name": f"Report {i}"},
                headers={**bearer(token), "Idempotency-Key": f"k{i}"},
            )
            assert answer.status_code == 201, answer.text
            made[f"k{i}"] = answer.json()["id"]
        with session_scope() as session:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.key.in_(["k0", "k1", "k2"]))
                .values(created_at=func.now() - text("interval '25 hours'"))
            )
        # when housekeeping's minute tick runs (batches of 2: two transactions)
        periodic.tick_housekeeping(lambda message: None)
        # then only the keys within the retention remain, and the pass records how many went
        assert _keys() == {"k3", "k4"}
        with session_scope() as session:
            details = session.scalar(
                text("SELECT details FROM heartbeats WHERE name = 'housekeeping'")
            )
        assert details["idempotency_keys"] == 3
        assert periodic.purge_old_idempotency_keys() == 0
        # and a repeat with a kept key answers the same object, a forgotten one makes anew
        kept = client.post(
            "/v1/automations",
            json={**AUTOMATION, "name": "Report 3"},
            headers={**bearer(token), "Idempotency-Key": "k3"},
        )
        assert kept.json()["id"] == made["k3"]
        anew = client.post(
            "/v1/automations",
            json={**AUTOMATION, "name": "Report 0 again"},
            headers={**bearer(token), "Idempotency-Key": "k0"},
        )
        assert anew.status_code == 201 and anew.json()["id"] != made["k0"]


def test_a_key_just_inside_its_retention_is_kept(
    db: None, redis_client: Any, small_batches: None
) -> None:
    token = make_token(make_workspace(), name="theirs")
    with api_client() as client:
        answer = client.post(
            "/v1/automations", json=AUTOMATION, headers={**bearer(token), "Idempotency-Key": "x"}
        )
        assert answer.status_code == 201
    with session_scope() as session:
        session.execute(
            update(IdempotencyKey).values(created_at=func.now() - text("interval '23 hours'"))
        )
    assert periodic.purge_old_idempotency_keys() == 0
    assert _keys() == {"x"}


# --- docs -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_the_docs_render_from_the_api_process_with_no_request_leaving_this_machine(
    db: None, redis_client: Any, api_process: ApiProcess, chromium: Any
) -> None:
    # given the Procfile's api
    assert httpx.get(f"{api_process.url}/redoc").status_code == 404  # its page calls out
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        with window(chromium, viewport=viewport) as page:
            outside = outside_requests(page)
            failed: list[str] = []
            page.on("requestfailed", lambda r, seen=failed: seen.append(r.url))
            # when a person opens the Swagger UI
            page.goto(f"{api_process.url}/docs")
            # then it lists the operations from the schema the process serves
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert page.title() == "Stepwise API"
            assert "/v1/automations" in [p.replace("\u200b", "") for p in paths]
            assert page.locator(".opblock").count() >= 20
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / f"api_docs_{name}.png"))
            # and no request left this machine, and none failed
            assert outside == [], outside
            assert failed == [], failed
