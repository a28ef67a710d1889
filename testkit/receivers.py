"""Real local receivers for notifications: an SMTP server (aiosmtpd) and an HTTP receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session

from stepwise.embedded import free_port


@dataclass
class Mailbox:
    """What the SMTP server received: each message's raw text, and the logins used."""

    port: int
    messages: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        self.box.messages.append(content.decode() if isinstance(content, bytes) else str(content))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 accepting any login (plain, no TLS), keeping every message."""
    box = Mailbox(port=free_port())

    def login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        box.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=login,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Receiver:
    """What the HTTP receiver got: (path, Authorization header, JSON body) per POST."""

    port: int
    posts: list[tuple[str, str | None, Any]] = field(default_factory=list)
    hosts: list[str | None] = field(default_factory=list)  # each POST's Host header
    status: int = 200  # what it answers; set to 500 to make a channel fail
    gets: list[str] = field(default_factory=list)  # each GET's path (answered with JSON)


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 recording every JSON POST and every GET."""
    receiver = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.posts.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            receiver.hosts.append(self.headers.get("Host"))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            receiver.gets.append(self.path)
            body = b'{"content": "internal data"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
