"""One logging setup for every process: JSON lines or readable text, with the run's ids.

`configure_logging()` is called first thing by every process (the API, the dashboard's
server, the scheduler, the dispatcher and the workers through `stepwise dramatiq` /
`stepwise periodiq`, the CLI, alembic's `env.py`): one handler on the root logger, on
stderr, so Dramatiq's, periodiq's, uvicorn's, Streamlit's and alembic's loggers go
through the same formatter as ours. `STEPWISE_LOG_FORMAT` is `json` (one object a line,
python-json-logger) or `text`; unset, JSON when stderr is not a terminal.

A run's ids are context variables, set by the runner for each run it flies (every
run is its own asyncio task, so each has its own): a line logged while a run is in
hand carries `execution_id`, `automation_id`, `workspace_id`, `step` and `attempt` as
fields. Reading them is one `ContextVar.get` a line; nothing is formatted for a line
below the level.

uvicorn's access lines name the path alone: a query string may carry what a log must
not keep (cursors, filters, a token a client put in the wrong place).

No line carries a secret: what looks like a credential (an API token, a bearer or
basic authorization, a webhook secret header, a secret-looking query value) is masked
in the message before it is written, whoever logged it.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from core.tokens import TOKEN_PREFIX

LogFormat = Literal["json", "text"]
RUN_FIELDS = ("execution_id", "automation_id", "workspace_id", "step", "attempt")
REDACTED = "REDACTED"

_run: ContextVar[dict[str, Any] | None] = ContextVar("stepwise_run", default=None)

# What a credential looks like in a line, whoever wrote it.
_SECRETS = re.compile(
    rf"(?P<token>{re.escape(TOKEN_PREFIX)})[A-Za-z0-9_\-]+"
    r"|(?P<scheme>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=\-]+"
    r"|(?P<header>(?:hook-secret|authorization|api[-_]?key)[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:Bearer|Basic|Token)\s+)?[^\s\"',;]+"
    r"|(?P<query>[?&](?:token|secret|key|api_key|apikey|password|sig|signature|access_token)=)"
    r"[^&\s\"']+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every credential-looking value replaced by REDACTED."""
    return _SECRETS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    prefix = next(group for group in match.groups() if group is not None)
    return prefix + REDACTED


def bind_run(
    *, execution_id: object, automation_id: object, workspace_id: object, attempt: int
) -> None:
    """Say that what this context logs from now on concerns this run (no step yet).

    The ids are kept as given and turned into text only when a line is written: a run
    that logs nothing pays for one small dict.
    """
    _run.set(
        {
            "execution_id": execution_id,
            "automation_id": automation_id,
            "workspace_id": workspace_id,
            "step": None,
            "attempt": attempt,
        }
    )


def bind_step(step: int) -> None:
    """Say that the run bound in this context is at `step` now."""
    fields = _run.get()
    if fields is not None:
        _run.set({**fields, "step": step})


def unbind_run() -> None:
    _run.set(None)


def run_fields() -> dict[str, Any] | None:
    """The run bound in this context, if any (its ids, step and attempt)."""
    return _run.get()


class RunContext(logging.Filter):
    """Puts the bound run's fields on each record, and masks credentials in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _run.get()
        if fields is not None:
            record.__dict__.update(fields)
            for name in ("execution_id", "automation_id", "workspace_id"):
                record.__dict__[name] = str(fields[name])
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned is not message and cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then the run's fields if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        found = record.__dict__
        fields = [f"{name}={found[name]}" for name in RUN_FIELDS if found.get(name) is not None]
        return f"{line} [{' '.join(fields)}]" if fields else line

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class JsonLines(JsonFormatter):
    """One JSON object a line: time (UTC), level, logger, message, process, and extra fields."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}{process}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
            json_ensure_ascii=False,
        )

    def formatException(self, ei: Any) -> str:
        return redact(str(super().formatException(ei)))


def chosen_format(configured: str, stream: Any) -> LogFormat:
    """`configured` (json or text), else JSON unless `stream` is a terminal."""
    if configured in ("json", "text"):
        return configured  # type: ignore[return-value]
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def _configured() -> tuple[str, str]:
    from core.errors import ConfigError
    from core.settings import get_settings

    try:
        settings = get_settings()
    except ConfigError:
        # The process reports its bad configuration itself, in the default format.
        return "", "INFO"
    return settings.log_format, settings.log_level


def configure_logging() -> None:
    """Send every logger of the process to one stderr handler in the configured format.

    Called before any library sets up its own (`logging.basicConfig` then does
    nothing). Idempotent: a second call (alembic inside `stepwise run`, a worker process
    after the fork) finds the handler in place.
    """
    root = logging.getLogger()
    if any(isinstance(h, _Handler) for h in root.handlers):
        return
    configured, level = _configured()
    handler = _Handler()
    handler.setFormatter(
        JsonLines() if chosen_format(configured, sys.stderr) == "json" else TextFormatter()
    )
    handler.addFilter(RunContext())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a line like any other
    # Libraries that log to handlers of their own: through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "dramatiq", "periodiq"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
        if name == "uvicorn.access":
            library.addFilter(PathOnly())
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line a plugin


class PathOnly(logging.Filter):
    """uvicorn's access log line with the path alone, its query string dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The process's one handler: writes to whatever `sys.stderr` is when a line comes
    (a Dramatiq worker process's is the pipe to its parent)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass
