"""A small agent server that answers the Stepwise agent contract.

The run command starts it so a newcomer sees real executions at once; the tests
start it in-process to record every call and to script failures. Optional
latency and failure rate make it useful for demos and benchmarks.

    python -m stepwise.demo_agent --port 8787 --latency-ms 50 --failure-rate 0.1

With `--verify-stored` (as `stepwise run` starts it) it checks every call's
`Stepwise-Signature` with the signing secret of the automation the call names, read from
Stepwise's database: any automation pointed at it works, and a new signing secret is
picked up by the next call. A real agent is given its automation's secret instead
(docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    """One request the agent received."""

    at: float
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart


Responder = Callable[[Call], Reply]
SecretOf = Callable[[str], str | None]  # an automation id -> its signing secret, if any


class StoredSecrets:
    """The signing secret of each automation that calls, looked up by `secret_of` once and
    again when a call no longer verifies with the one known (the secret was rotated)."""

    def __init__(self, secret_of: SecretOf) -> None:
        self.secret_of = secret_of
        self.known: dict[str, str] = {}
        self._lock = threading.Lock()

    def verify(self, call: Call) -> bool:
        header = call.headers.get("stepwise-signature", "")
        body = call.body if isinstance(call.body, dict) else {}
        automation_id = body.get("automation_id")
        if not isinstance(automation_id, str):
            return False
        with self._lock:
            known = self.known.get(automation_id)
        if known is not None and verify_signature(known, header, call.raw):
            return True
        try:
            fresh = self.secret_of(automation_id)
        except Exception:  # not an automation id, or the database away: refused
            return False
        if fresh is None:
            return False
        with self._lock:
            self.known[automation_id] = fresh
        return verify_signature(fresh, header, call.raw)


# The snippet docs/SECURITY.md gives agent authors, verbatim (tests/test_signing.py checks).
def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """True when `header` (Stepwise-Signature) signs these exact body bytes, recently."""
    import hashlib
    import hmac
    import time

    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False  # an old request replayed
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def default_reply(call: Call) -> Reply:
    body = call.body if isinstance(call.body, dict) else {}
    return Reply(
        200,
        {
            "output": f"done: {body.get('message', '')}",
            "step_number": body.get("step_number"),
            "received_previous_output": body.get("previous_output"),
            "received_input": body.get("input"),  # the run's input (README)
        },
    )


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 1024  # a burst of workers connects at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a caller that hung up (timeout, test teardown) is not the agent's problem


class AgentServer:
    """A threaded HTTP agent on 127.0.0.1 that records calls; `responder` decides replies."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        failure_rate: float = 0.0,
        record: bool = True,
        signing_secret: str | None = None,
        stored_secrets: StoredSecrets | None = None,
    ) -> None:
        self.signing_secret = signing_secret  # when set, unsigned or forged calls get 401
        self.stored_secrets = stored_secrets  # when set, each automation's own secret
        self.latency_s = latency_ms / 1000
        self.failure_rate = failure_rate
        self.record = record
        self.responder: Responder = default_reply
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/agent"

    def start(self) -> AgentServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def script(self, *replies: Reply) -> None:
        """Answer the next calls with these replies in order, then with the default."""
        pending = list(replies)

        def scripted(call: Call) -> Reply:
            with self._lock:
                return pending.pop(0) if pending else default_reply(call)

        self.responder = scripted

    def calls_for(self, execution_id: str) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self.calls
                if isinstance(c.body, dict) and c.body.get("execution_id") == execution_id
            ]

    def _signed(self, call: Call) -> bool:
        if self.stored_secrets is not None:
            return self.stored_secrets.verify(call)
        header = call.headers.get("stepwise-signature", "")
        return self.signing_secret is None or verify_signature(
            self.signing_secret, header, call.raw
        )

    def _reply_for(self, call: Call) -> Reply:
        if not self._signed(call):
            return Reply(401, {"error": "demo agent: missing or wrong Stepwise-Signature"})
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.failure_rate and random.random() < self.failure_rate:
            return Reply(503, {"error": "demo agent: simulated failure"})
        return self.responder(call)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: workers reuse connections
            # Headers and body go out in separate writes: with Nagle on, the body
            # waits for the client's delayed ACK (the cost: bench/HISTORY.md).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                call = Call(time.time(), self.path, headers, body, raw)
                if server.record:
                    with server._lock:
                        server.calls.append(call)
                self._send(server._reply_for(call))

            def do_GET(self) -> None:  # a health check for people and scripts
                self._send(Reply(200, {"status": "ok", "agent": "stepwise demo agent"}))

            def _send(self, reply: Reply) -> None:
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = reply.body
                if isinstance(payload, dict):
                    data = json.dumps(payload).encode()
                    content_type = "application/json"
                elif isinstance(payload, str):
                    data, content_type = payload.encode(), "text/plain; charset=utf-8"
                else:
                    data, content_type = payload or b"", "application/octet-stream"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply.trickle_s:
                        for byte in data:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(reply.trickle_s)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up (timeout): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stepwise demo agent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument(
        "--verify-stored",
        action="store_true",
        help="verify Stepwise-Signature with the calling automation's secret, read from "
        "Stepwise's database (DATABASE_URL, STEPWISE_SECRET_KEYS)",
    )
    args = parser.parse_args(argv)
    stored = None
    if args.verify_stored:
        import uuid

        from service.automations import call_signing_secret

        stored = StoredSecrets(lambda automation_id: call_signing_secret(uuid.UUID(automation_id)))
    server = AgentServer(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        failure_rate=args.failure_rate,
        record=False,
        stored_secrets=stored,
    )
    print(f"demo agent listening on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
