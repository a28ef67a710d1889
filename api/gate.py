"""The gate every request passes before any route sees it: the token first, then the body.

FastAPI reads and parses a route's JSON body before it resolves the route's dependencies,
so a token checked by a dependency alone is checked after an anonymous caller's body was
read into memory and parsed. Here, the calls that need a token (everything under `/v1/`
but the webhooks and the callbacks, which prove themselves by their own secret or signed
URL) are authenticated before a byte of their body is read (401 with the body unread),
and no request's body may pass
MAX_API_BODY_BYTES (413): refused by its declared length before reading, or as soon as
what it streams passes the limit. Every answer says it may not be framed by another
site (the docs page included: clickjacking).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import auth
from api.problems import BodyTooLarge, answer
from core.errors import StepwiseError
from core.limits import MAX_API_BODY_BYTES
from core.web import FRAMING_HEADERS

# A webhook's own proof (api.webhooks), an async step's signed callback URL (api.waits).
_NO_TOKEN = ("/v1/hooks/", "/v1/webhooks/", "/v1/callbacks/")
TOO_LARGE = f"send at most {MAX_API_BODY_BYTES // (1024 * 1024)} MiB"


def needs_token(path: str) -> bool:
    return path.startswith("/v1/") and not path.startswith(_NO_TOKEN)


class Gate:
    """ASGI middleware: authenticate, then cap the body (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _unframeable(send)
        headers = Headers(scope=scope)
        try:
            if needs_token(scope["path"]):
                token = _bearer(headers.get("authorization", ""))
                actor = await run_in_threadpool(auth.authenticate, token)
                scope.setdefault("state", {})["actor"] = actor
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_API_BODY_BYTES:
                raise BodyTooLarge(TOO_LARGE)
        except StepwiseError as exc:
            await answer(exc)(scope, receive, send)
            return
        await self.app(scope, _capped(receive), send)


def _unframeable(send: Send) -> Send:
    extra = [(k.lower().encode(), v.encode()) for k, v in FRAMING_HEADERS.items()]

    async def framed(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return framed


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _capped(receive: Receive) -> Receive:
    """`receive`, refusing (413) a body that streams past the limit whatever it declared."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_API_BODY_BYTES:
                # An HTTPException is what FastAPI lets through from a body read (any
                # other error there becomes a 400); api.problems turns it into a problem.
                raise HTTPException(413, TOO_LARGE)
        return message

    return capped
