"""The dashboard's web server: Streamlit's `st.App` with our settings, headers and host check.

`stepwise web` (the Procfile's `web`) starts this file. It serves `dashboard/app.py` with:
- Streamlit's settings given here, not read from a `.streamlit/config.toml` that exists
  only when the process starts in the repository (no traceback, no developer menu);
- the login's `[auth]` section built from STEPWISE_OIDC_* in memory: no secrets file;
- every answer saying it may not be framed by another site (clickjacking);
- every request, `/_stcore/*` and the WebSocket included, refused under a Host this
  deployment does not answer to (DNS rebinding), as the pages refuse it;
- its log lines through Stepwise's logging (`core.logs`): Streamlit gives each of its
  loggers a console handler of its own and prints its welcome and warnings straight to the
  terminal; here every one of them, loggers made later included, goes through the
  process's one handler instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from pathlib import Path
from typing import Any

# Started as a file: the project root is not on sys.path yet.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from core.logs import configure_logging  # noqa: E402
from core.settings import Settings, get_settings  # noqa: E402
from core.web import FRAMING_HEADERS  # noqa: E402

SCRIPT = ROOT / "dashboard" / "app.py"
ELSEWHERE = "This dashboard does not answer on this address."

# What the people using the dashboard get: no "Deploy" button or developer menu, and an
# unexpected error as a generic message (no traceback, no server paths or database host).
STREAMLIT_CONFIG: dict[str, Any] = {
    "client.toolbarMode": "viewer",
    "client.showErrorDetails": "none",
    "browser.gatherUsageStats": False,
    "server.headless": True,
    "theme.base": "light",
}


# What Streamlit prints is Streamlit's: logged under its name.
streamlit_log = logging.getLogger("streamlit.cli")
_pending: list[str] = []


def _through_root(logger: logging.Logger) -> None:
    handler = getattr(logger, "streamlit_console_handler", None)
    if handler is not None:
        logger.removeHandler(handler)
    logger.propagate = True


def _print_as_log(message: str, **options: Any) -> None:
    """Streamlit's `print_to_cli`, as log lines (a line printed in parts is one line)."""
    _pending.append(message)
    if options.get("nl", True):
        line = "".join(_pending).strip()
        _pending.clear()
        if line:
            streamlit_log.info("%s", line)


def route_logs() -> None:
    """Every line Streamlit and its uvicorn write, through the process's one handler."""
    configure_logging()
    import streamlit.cli_util
    import streamlit.logger
    import uvicorn.config

    streamlit.cli_util.print_to_cli = _print_as_log
    # Streamlit's uvicorn applies uvicorn's default logging (handlers of its own): make
    # that default configure nothing, so uvicorn's loggers reach the root's handler.
    uvicorn.config.LOGGING_CONFIG.clear()
    uvicorn.config.LOGGING_CONFIG.update(
        version=1,
        disable_existing_loggers=False,
        formatters={  # made (uvicorn sets their colours), given to no handler
            "default": {"()": "uvicorn.logging.DefaultFormatter"},
            "access": {"()": "uvicorn.logging.AccessFormatter"},
        },
    )
    streamlit.logger.setup_formatter = _through_root
    for logger in list(streamlit.logger._loggers.values()):
        _through_root(logger)


class Guard:
    """ASGI middleware: the Host check and the framing headers, on every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not get_settings().web_host_allowed(host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await PlainTextResponse(ELSEWHERE, status_code=421)(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in FRAMING_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, framed)


def login_secrets(settings: Settings, port: int) -> dict[str, Any]:
    """Streamlit's `[auth]` section from STEPWISE_OIDC_*.

    The login cookie is signed with a key derived from the first of
    STEPWISE_SECRET_KEYS, so it survives restarts and needs no variable of its own.
    """
    key = settings.secret_box().first_key
    cookie_secret = hmac.new(key.encode(), b"stepwise login cookie", hashlib.sha256).hexdigest()
    issuer = settings.oidc_issuer.rstrip("/")
    return {
        "auth": {
            "redirect_uri": settings.oidc_redirect_uri or f"http://localhost:{port}/oauth2callback",
            "cookie_secret": cookie_secret,
            "client_id": settings.oidc_client_id,
            "client_secret": settings.oidc_client_secret,
            "server_metadata_url": f"{issuer}/.well-known/openid-configuration",
        }
    }


def main() -> None:
    route_logs()
    settings = get_settings()
    port = settings.web_listen_port()
    secrets = login_secrets(settings, port) if settings.login_required else None
    app = st.App(SCRIPT, secrets=secrets, middleware=[Middleware(Guard)])
    app.run(
        config={
            **STREAMLIT_CONFIG,
            "server.port": port,
            "server.address": settings.web_address,
        }
    )


if __name__ == "__main__":
    main()
