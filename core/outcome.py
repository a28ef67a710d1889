"""The agent contract's pure half: what a step run keeps of its request, and what an
answer means (success, a failure worth retrying, or a failure for good).

`tasks/agent.py` makes the HTTP call and hands the status, reason, headers and
(capped) body to `answer_outcome`. 2xx is success; 5xx, 408 and 429 are worth
retrying (honouring Retry-After); any other status fails the execution at once.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from core.automation import redact_url
from core.limits import MAX_OUTPUT_DEPTH
from core.text import storable

# Sent with every step but stored once: the context lives on the automation, the
# previous output is the previous step's stored response, the input is the execution's.
# Stored per step, they would multiply an execution's size by its number of steps
# (bench/HISTORY.md has the figure).
REPEATED_FIELDS = ("project_context", "previous_output", "input")
RETRYABLE_STATUSES = frozenset({408, 429})


def stored_request(url: str, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """What a step run keeps of the request it sent: no secret, nothing repeated per step."""
    return {
        "url": redact_url(url),
        "headers": headers,
        "body": {name: value for name, value in body.items() if name not in REPEATED_FIELDS},
        "not_stored": list(REPEATED_FIELDS),
    }


# Header names whose values are credentials: shown as a placeholder, never as stored.
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|cookie|password|signature", re.I)
_SECRET_REFERENCE = re.compile(r"\{\{\s*secret\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SIGNATURE_PLACEHOLDER = (
    't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body under the signing secret>'
)


def curl_command(request: dict[str, Any]) -> str:
    """A stored step request as a `curl` command a person can copy and run. No secret is
    ever in it: a `{{ secret.NAME }}` reference becomes `$NAME`, any other credential-like
    header a `<name>` placeholder, the signature header a placeholder (a real one is made
    per call with the automation's signing secret); the fields sent with every step but
    not stored are left out."""
    lines = [f"curl -sS -X POST {shlex.quote(str(request.get('url', '')))}"]
    headers = {"Content-Type": "application/json", **(request.get("headers") or {})}
    for name, value in headers.items():
        if _SECRET_REFERENCE.search(str(value)):
            lines.append(f"-H {_with_variables(f'{name}: {value}')}")
            continue
        shown = f"<{name.lower()}>" if _CREDENTIAL_HEADER.search(name) else str(value)
        lines.append(f"-H {shlex.quote(f'{name}: {shown}')}")
    lines.append(f"-H {shlex.quote(f'Stepwise-Signature: {SIGNATURE_PLACEHOLDER}')}")
    body = json.dumps(request.get("body") or {}, ensure_ascii=False)
    lines.append(f"--data-raw {shlex.quote(body)}")
    return " \\\n  ".join(lines)


def _with_variables(text: str) -> str:
    """`text` quoted for a shell, each secret reference left as "${NAME}" for it to fill in
    (the rest single-quoted: nothing stored is ever run by the shell)."""
    parts: list[str] = []
    at = 0
    for found in _SECRET_REFERENCE.finditer(text):
        if found.start() > at:
            parts.append(shlex.quote(text[at : found.start()]))
        parts.append(f'"${{{found.group(1)}}}"')
        at = found.end()
    if at < len(text):
        parts.append(shlex.quote(text[at:]))
    return "".join(parts)


MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class StepOutcome:
    """What one agent call produced, ready to be stored on its step_run."""

    ok: bool
    retryable: bool
    status: int | None
    body: str | None
    error: str | None
    duration_ms: int
    retry_after_s: float | None = None
    output: Any = None

    @classmethod
    def failure(cls, error: str, duration_ms: int, *, retryable: bool) -> StepOutcome:
        """A call that produced no usable answer (timeout, refused, bad URL, redirect)."""
        return cls(False, retryable, None, None, error, duration_ms)


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUSES


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), capped at an hour."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; RFC 5322 means UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):  # "nan" is a float to Python, and no delay at all
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def clean_text(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\ufffd")


BOM = "\ufeff"


def parse_output(body: str, *, truncated: bool) -> Any:
    """The step's output for the next step and the run's result: the body's JSON when
    it is whole JSON that jsonb can store, else the body's text.

    Never raises: an agent's body is untrusted input, and an exception here would
    send the run round again and call the agent again for the same step.
    """
    if truncated:
        return body
    text = body.removeprefix(BOM)
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError):
        # ValueError: not JSON, NaN or an infinity, or an integer past Python's int-str
        # digit limit; RecursionError: nested deeper than the parser's stack.
        return body
    if (
        "\\u" not in text
        and text.count("[") + text.count("{") <= MAX_OUTPUT_DEPTH
        and storable(text)
    ):
        # Nothing to walk through: in storable text only a `\\u` escape can make a NUL
        # or a lone surrogate, no number is infinite (`_finite`), and no value nests
        # deeper than the brackets there are.
        return value
    return value if storable_json(value) else body


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can hold")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is not a finite number")
    return value


# Made once: `json.loads` with hooks builds a decoder for every call.
_DECODER = json.JSONDecoder(parse_constant=_not_a_number, parse_float=_finite)


def storable_json(value: Any) -> bool:
    """Whether PostgreSQL jsonb holds `value`, and json.dumps writes it as valid UTF-8
    JSON, at any call depth: no NUL, no lone surrogate, no NaN or infinity, and
    nested at most MAX_OUTPUT_DEPTH deep. Iterative, so no depth can overflow it."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if not storable(item):
                return False
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, list | dict):
            if depth > MAX_OUTPUT_DEPTH:
                return False
            children = item if isinstance(item, list) else [*item, *item.values()]
            pending.extend((child, depth + 1) for child in children)
    return True


def decode_body(raw: bytes, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes as storable text, and whether the body was longer."""
    truncated = len(raw) > limit
    text = clean_text(raw[:limit].decode("utf-8", errors="replace"))
    if truncated:
        text += f"\n[truncated: stored the first {limit} bytes]"
    return text, truncated


def undecodable_body(raw: bytes, limit: int, reason: str) -> tuple[str, bool]:
    """What a body that could not be decoded (a Content-Encoding it does not have)
    stores: the bytes read before the failure as text, and the reason. Marked
    incomplete, so that the next step gets this text, never a half-read document."""
    text, _ = decode_body(raw, limit)
    return f"{text}\n[unreadable body: {clean_text(reason)}]", True


def answer_outcome(
    status: int,
    reason: str,
    body: str,
    *,
    truncated: bool,
    retry_after: str | None,
    duration_ms: int,
) -> StepOutcome:
    """Classify an HTTP answer of the agent (after redirects were followed)."""
    if 200 <= status < 300:
        output = parse_output(body, truncated=truncated)
        return StepOutcome(True, False, status, body, None, duration_ms, output=output)
    retryable = is_retryable_status(status)
    error = f"agent answered HTTP {status} {reason}".rstrip()
    wait = parse_retry_after(retry_after) if retryable else None
    return StepOutcome(False, retryable, status, body, error, duration_ms, wait)
