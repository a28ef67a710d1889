"""The agent contract's pure parts, and call_agent against a real local server."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from core.egress import parse_allowlist
from core.limits import MAX_OUTPUT_DEPTH
from core.outcome import (
    answer_outcome,
    decode_body,
    is_retryable_status,
    parse_output,
    parse_retry_after,
    storable_json,
    undecodable_body,
)
from core.text import json_bytes
from stepwise.demo_agent import Reply
from tasks.agent import AgentClient, call_agent


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (422, False),
    ],
)
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("999999", now=now) == 3600.0  # capped
    assert parse_retry_after("-5", now=now) == 0.0


def test_a_retry_after_python_cannot_count_with_is_read_or_ignored() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    # "-0000" makes a naive datetime: it is UTC, not an exception
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 -0000", now=now) == 30.0
    # float() reads these; NaN is no delay at all, infinity is the cap
    assert parse_retry_after("nan", now=now) is None
    assert parse_retry_after("NaN", now=now) is None
    assert parse_retry_after("inf", now=now) == 3600.0
    assert parse_retry_after("-inf", now=now) == 0.0
    assert parse_retry_after("1e999", now=now) == 3600.0


def test_outputs_are_json_when_they_can_be() -> None:
    assert parse_output('{"a": 1}', truncated=False) == {"a": 1}
    assert parse_output("plain", truncated=False) == "plain"
    assert parse_output('{"a": 1', truncated=True) == '{"a": 1'


NESTED = MAX_OUTPUT_DEPTH + 1


def _nested(depth: int) -> list[Any]:
    """`[[[...]]]`, `depth` lists deep."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Bodies as `decode_body` hands them on (NUL bytes already replaced, bad UTF-8 too).
@pytest.mark.parametrize(
    ("body", "output"),
    [
        pytest.param("[" * 5000, "[" * 5000, id="5000 nested arrays"),
        pytest.param("[" * 5000 + "]" * 5000, "[" * 5000 + "]" * 5000, id="closed"),
        pytest.param('{"a":' * 5000, '{"a":' * 5000, id="5000 nested objects"),
        pytest.param("[" * NESTED + "]" * NESTED, "[" * NESTED + "]" * NESTED, id="too deep"),
        pytest.param(
            "[" * (NESTED - 1) + "]" * (NESTED - 1), _nested(NESTED - 1), id="deep enough"
        ),
        pytest.param('{"o": "a\\u0000b"}', '{"o": "a\\u0000b"}', id="NUL in a string"),
        pytest.param('{"a\\u0000": 1}', '{"a\\u0000": 1}', id="NUL in a key"),
        pytest.param('[{"b": ["\\u0000"]}]', '[{"b": ["\\u0000"]}]', id="NUL nested"),
        pytest.param('{"o": "\\ud800"}', '{"o": "\\ud800"}', id="lone high surrogate"),
        pytest.param('{"\\udc00": 1}', '{"\\udc00": 1}', id="lone low surrogate"),
        pytest.param('"\\ud83d\\ude00"', "\U0001f600", id="a surrogate pair"),
        pytest.param('{"n": 1e999999}', '{"n": 1e999999}', id="huge exponent"),
        pytest.param('{"n": -1e999999}', '{"n": -1e999999}', id="huge negative exponent"),
        pytest.param('{"n": 1e-999999}', {"n": 0.0}, id="tiny exponent"),
        pytest.param("1" * 100_000, "1" * 100_000, id="100,000-digit integer"),
        pytest.param("9" * 4300, int("9" * 4300), id="4,300-digit integer"),
        pytest.param('{"n": NaN}', '{"n": NaN}', id="NaN"),
        pytest.param("[Infinity, -Infinity]", "[Infinity, -Infinity]", id="Infinity"),
        pytest.param("[1, 2]", [1, 2], id="a JSON array"),
        pytest.param('"text"', "text", id="a JSON string"),
        pytest.param("42", 42, id="a JSON number"),
        pytest.param("null", None, id="JSON null"),
        pytest.param("", "", id="empty"),
        pytest.param('\ufeff{"o": 1}', {"o": 1}, id="a BOM"),
        pytest.param('{"o": "caf\ufffd("}', {"o": "caf\ufffd("}, id="replaced UTF-8"),
        pytest.param('{"o": "half', '{"o": "half', id="truncated JSON"),
        pytest.param("\ufffd\x01 binary", "\ufffd\x01 binary", id="binary"),
        pytest.param('{"t": "[[{{"}', {"t": "[[{{"}, id="brackets in a text"),
        pytest.param('{"n": 1.5e3}', {"n": 1500.0}, id="an exponent"),
    ],
)
def test_any_body_parses_to_an_output_jsonb_can_store(body: str, output: Any) -> None:
    # when the body is parsed, it never raises
    parsed = parse_output(body, truncated=False)
    # then the output is the JSON when jsonb can hold it, else the text
    assert parsed == output
    assert storable_json(parsed)
    # and it is JSON the next step's request can carry
    assert json.loads(json.dumps(parsed, allow_nan=False).encode()) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "a\x00b",
        {"a\x00": 1},
        ["\ud800"],
        {"k": [{"deep": float("nan")}]},
        float("inf"),
        -float("inf"),
        _nested(NESTED),
    ],
)
def test_what_jsonb_cannot_store(value: Any) -> None:
    assert not storable_json(value)


def test_an_undecodable_body_is_kept_as_text_with_the_reason() -> None:
    text, incomplete = undecodable_body(b'{"o": 1}', 1024, "not gzip as declared: bad\x00")
    assert text == '{"o": 1}\n[unreadable body: not gzip as declared: bad\ufffd]'
    assert incomplete is True
    assert parse_output(text, truncated=incomplete) == text


def _answer(status: int, reason: str, body: str, **kw: Any) -> Any:
    return answer_outcome(
        status,
        reason,
        body,
        truncated=kw.pop("truncated", False),
        retry_after=kw.pop("retry_after", None),
        duration_ms=kw.pop("duration_ms", 12),
    )


def test_a_2xx_json_answer_succeeds_with_its_parsed_output() -> None:
    outcome = _answer(201, "Created", '{"next": [1, 2]}')
    assert (outcome.ok, outcome.retryable, outcome.status) == (True, False, 201)
    assert outcome.output == {"next": [1, 2]}
    assert outcome.body == '{"next": [1, 2]}'
    assert (outcome.error, outcome.retry_after_s, outcome.duration_ms) == (None, None, 12)


def test_a_truncated_2xx_answer_keeps_its_text_as_output() -> None:
    body = '{"a": "xxxx\n[truncated: stored the first 10 bytes]'
    outcome = _answer(200, "OK", body, truncated=True)
    assert outcome.ok
    assert outcome.output == body  # the text, not parsed


def test_a_503_with_retry_after_is_retried_after_that_long() -> None:
    outcome = _answer(503, "Service Unavailable", "busy", retry_after="7")
    assert (outcome.ok, outcome.retryable, outcome.status) == (False, True, 503)
    assert outcome.retry_after_s == 7.0
    assert outcome.error == "agent answered HTTP 503 Service Unavailable"
    assert outcome.output is None


def test_a_404_fails_for_good() -> None:
    outcome = _answer(404, "Not Found", "no such agent", retry_after="7")
    assert (outcome.ok, outcome.retryable, outcome.status) == (False, False, 404)
    assert outcome.error == "agent answered HTTP 404 Not Found"
    assert outcome.retry_after_s is None  # nothing to wait for: it is not retried
    assert outcome.body == "no such agent"


def test_decode_body_replaces_nul_and_marks_truncation() -> None:
    assert decode_body(b"bin\x00ary", 1024) == ("bin\ufffdary", False)
    assert decode_body(b"x" * 10, 10) == ("x" * 10, False)  # exactly the limit: whole
    text, truncated = decode_body(b"x" * 11, 10)
    assert truncated is True
    assert text == "x" * 10 + "\n[truncated: stored the first 10 bytes]"
    assert decode_body(b"caf\xc3", 1024) == ("caf\ufffd", False)  # bad UTF-8 is replaced


def _call(url: str, **kw: Any) -> Any:
    async def call() -> Any:
        async with AgentClient(parse_allowlist("127.0.0.1")) as client:
            return await call_agent(
                client,
                url,
                {"x": 1},
                idempotency_key="k:1",
                timeout_s=kw.pop("timeout", 2),
                max_bytes=kw.pop("max_bytes", 1024),
            )

    return asyncio.run(call())


def test_success_sends_the_idempotency_key(agent: Any) -> None:
    outcome = _call(agent.url)
    assert outcome.ok and outcome.status == 200 and outcome.output["step_number"] is None
    assert agent.calls[0].idempotency_key == "k:1"


def test_a_big_body_is_stored_truncated(agent: Any) -> None:
    agent.script(Reply(200, "x" * 100_000))
    outcome = _call(agent.url, max_bytes=1024)
    assert outcome.ok
    assert outcome.body.startswith("x" * 1024) and "[truncated" in outcome.body
    assert len(outcome.body) < 1200


def test_429_carries_retry_after(agent: Any) -> None:
    agent.script(Reply(429, "slow down", headers={"Retry-After": "3"}))
    outcome = _call(agent.url)
    assert (outcome.ok, outcome.retryable, outcome.retry_after_s) == (False, True, 3.0)
    assert outcome.error == "agent answered HTTP 429 Too Many Requests"


def test_timeouts_and_refused_connections_are_retryable(agent: Any) -> None:
    agent.script(Reply(200, "late", delay_s=1.5))
    outcome = _call(agent.url, timeout=0.3)
    assert (outcome.ok, outcome.retryable) == (False, True)
    assert "timed out" in (outcome.error or "")
    from stepwise.embedded import free_port

    refused = _call(f"http://127.0.0.1:{free_port()}/agent")
    assert (refused.ok, refused.retryable) == (False, True)
    assert "could not reach the agent" in (refused.error or "")


def test_a_redirect_loop_fails_for_good(agent: Any) -> None:
    agent.responder = lambda call: Reply(307, "", headers={"Location": "/agent"})
    outcome = _call(agent.url)
    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error == "agent redirected more than 5 times (redirect loop?)"
    assert len(agent.calls) == 6  # the POST was repeated, body and all, each time
    assert all(call.body == {"x": 1} for call in agent.calls)


def test_a_redirect_that_drops_the_post_fails_instead_of_faking_success(agent: Any) -> None:
    agent.responder = lambda call: Reply(302, "", headers={"Location": "/elsewhere"})
    outcome = _call(agent.url)
    assert (outcome.ok, outcome.retryable, outcome.status) == (False, False, 302)
    assert "redirected with HTTP 302 to /elsewhere" in (outcome.error or "")


def test_nul_bytes_never_reach_postgres(agent: Any) -> None:
    agent.script(Reply(200, b"bin\x00ary"))
    outcome = _call(agent.url)
    assert "\x00" not in outcome.body


@pytest.mark.parametrize("same_origin", [True, False])
def test_the_automations_headers_follow_a_redirect_only_within_its_origin(
    agent: Any, same_origin: bool
) -> None:
    # given an agent that redirects (307) to itself, or to another origin
    from stepwise.demo_agent import AgentServer

    other = AgentServer().start()
    try:
        target = agent.url + "/v2" if same_origin else other.url
        agent.script(Reply(307, "", headers={"Location": target}))

        async def call() -> Any:
            async with AgentClient(parse_allowlist("127.0.0.1")) as client:
                return await call_agent(
                    client,
                    agent.url,
                    {"x": 1},
                    idempotency_key="k:1",
                    timeout_s=2,
                    max_bytes=1024,
                    extra_headers={"Authorization": "Bearer t0ken"},
                )

        outcome = asyncio.run(call())
    finally:
        other.stop()
    # then the step succeeds at the target, which gets the credential only at home
    assert outcome.ok
    landed = agent.calls[1] if same_origin else other.calls[0]
    assert landed.headers.get("authorization") == ("Bearer t0ken" if same_origin else None)
    assert landed.idempotency_key == "k:1"  # Stepwise's own headers always follow


class _TlsAgent:
    """An HTTPS agent on loopback with a certificate for `hostname` from a local CA."""

    def __init__(self, hostname: str) -> None:
        import http.server
        import ssl
        import threading

        import trustme

        self.ca = trustme.CA()
        self.bodies: list[bytes] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(hostname).configure_cert(context)
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                answer = b'{"output": "over tls"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/agent"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def call(self) -> Any:
        import ssl

        async def call() -> Any:
            trusted = ssl.create_default_context()
            self.ca.configure_trust(trusted)
            async with AgentClient(parse_allowlist("127.0.0.1"), ssl_context=trusted) as client:
                return await call_agent(
                    client, self.url, {"x": 1}, idempotency_key="k:1", timeout_s=5, max_bytes=1024
                )

        try:
            return asyncio.run(call())
        finally:
            self.server.shutdown()


def test_an_agent_over_tls_is_called_through_the_guarded_connection() -> None:
    # given an HTTPS agent whose certificate names the address it listens on
    agent = _TlsAgent("127.0.0.1")
    # when a step is posted to it
    outcome = agent.call()
    # then the call went over TLS and succeeded
    assert outcome.ok and outcome.output == {"output": "over tls"}
    assert json.loads(agent.bodies[0]) == {"x": 1}


def test_an_agent_whose_certificate_names_another_host_is_not_called() -> None:
    # given an HTTPS agent whose certificate is for another name
    agent = _TlsAgent("agent.example")
    # when a step is posted to it
    outcome = agent.call()
    # then nothing is sent, and the failure is a transport failure worth a retry
    assert not outcome.ok and outcome.retryable
    assert outcome.error == "could not reach the agent, or it did not answer in HTTP"
    assert agent.bodies == []


def test_a_connection_the_agent_closed_while_idle_is_not_reused() -> None:
    import socket
    import threading

    # given an agent that answers one request per connection, then closes it
    # while the client still holds it as idle (no "Connection: close")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/agent"

    async def two_calls() -> list[Any]:
        async with AgentClient(parse_allowlist("127.0.0.1")) as client:
            outcomes = []
            for n in range(2):
                outcomes.append(
                    await call_agent(
                        client, url, {}, idempotency_key=f"k:{n}", timeout_s=2, max_bytes=64
                    )
                )
                await asyncio.sleep(0.2)  # the agent closes its end meanwhile
            return outcomes

    # when two steps are posted one after the other
    outcomes = asyncio.run(two_calls())
    listener.close()
    # then both succeed, the second on a new connection
    assert [o.ok for o in outcomes] == [True, True]
    assert len(accepted) == 2


def test_a_cookie_an_agent_sets_never_travels_with_a_later_call(agent: Any) -> None:
    # given an agent that sets a session cookie on its first answer
    agent.script(
        Reply(200, {"output": 1}, headers={"Set-Cookie": "session=tenant-a; Path=/"}),
        Reply(200, {"output": 2}),
    )

    async def two_calls() -> list[Any]:
        async with AgentClient(parse_allowlist("127.0.0.1")) as client:
            return [
                await call_agent(
                    client, agent.url, {}, idempotency_key=f"k:{n}", timeout_s=2, max_bytes=64
                )
                for n in range(2)
            ]

    # when the same worker's client calls it again (another run, maybe another workspace)
    outcomes = asyncio.run(two_calls())
    # then the second call carries no cookie
    assert [o.ok for o in outcomes] == [True, True]
    assert [c.headers.get("cookie") for c in agent.calls] == [None, None]


@pytest.mark.parametrize(
    "value",
    [
        {"message": 'caf\u00e9 \u2603 "quoted" \\ \n', "n": [1, -2.5, 1e16, None, True]},
        {"big": 2**70, "small": -(2**70)},  # past 64 bits: the standard encoder writes it
        {1: "a key that is not a text"},
        [],
    ],
)
def test_json_bytes_writes_what_the_standard_encoder_means(value: Any) -> None:
    written = json_bytes(value)
    standard = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(written) == json.loads(standard)
    assert len(written) <= len(standard)  # as compact


def test_json_bytes_refuses_a_lone_surrogate_as_the_standard_encoder_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        json_bytes({"o": "\ud800"})
