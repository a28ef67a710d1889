"""The agent contract: one HTTP POST per step, and what its answer means.

2xx is success. Connect errors, timeouts, 5xx, 408 and 429 are worth retrying
(honouring Retry-After); any other status, a redirect that would drop the POST,
a redirect loop or a bad URL fails the execution at once. Bodies are read up to
a cap, so a 10 MB answer costs 64 KiB of memory and is stored truncated.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

RETRYABLE_STATUSES = frozenset({408, 429})
MAX_RETRY_AFTER_S = 3600.0
USER_AGENT = "Stepwise/0.1"


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
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def clean_text(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\ufffd")


def parse_output(body: str, *, truncated: bool) -> Any:
    """The step's output for the next step: JSON when the body is JSON, else the text."""
    if not truncated:
        try:
            return json.loads(body)
        except ValueError:
            pass
    return body


def _read_capped(response: httpx.Response, limit: int) -> tuple[str, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    raw = b"".join(chunks)
    truncated = len(raw) > limit
    text = clean_text(raw[:limit].decode("utf-8", errors="replace"))
    if truncated:
        text += f"\n[truncated: stored the first {limit} bytes]"
    return text, truncated


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _from_response(response: httpx.Response, limit: int, started: float) -> StepOutcome:
    body, truncated = _read_capped(response, limit)
    status = response.status_code
    duration = _elapsed_ms(started)
    if 200 <= status < 300:
        output = parse_output(body, truncated=truncated)
        return StepOutcome(True, False, status, body, None, duration, output=output)
    retryable = is_retryable_status(status)
    error = f"agent answered HTTP {status} {response.reason_phrase}".rstrip()
    retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
    return StepOutcome(False, retryable, status, body, error, duration, retry_after)


MAX_REDIRECTS = 5


def _post(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    limit: int,
    started: float,
) -> StepOutcome:
    # Only 307/308 keep the POST and its body; 301/302/303 would turn the step into
    # a GET that "succeeds" without the agent ever seeing it, so they fail instead.
    for _ in range(MAX_REDIRECTS + 1):
        with client.stream(
            "POST", url, json=payload, headers=headers, timeout=timeout_s
        ) as response:
            location = response.headers.get("location")
            if response.status_code in (307, 308) and location:
                url = str(response.url.join(location))
                continue
            if response.status_code in (301, 302, 303):
                error = (
                    f"agent redirected with HTTP {response.status_code} to {location}; "
                    "set the automation's agent URL to the final address"
                )
                return StepOutcome(
                    False, False, response.status_code, None, error, _elapsed_ms(started)
                )
            return _from_response(response, limit, started)
    error = f"agent redirected more than {MAX_REDIRECTS} times (redirect loop?)"
    return StepOutcome(False, False, None, None, error, _elapsed_ms(started))


def call_agent(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str,
    timeout_s: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
) -> StepOutcome:
    """POST one step to the agent and classify the answer; never raises for HTTP trouble."""
    started = time.monotonic()
    request_headers = {"Idempotency-Key": idempotency_key, **(headers or {})}
    try:
        return _post(client, url, payload, request_headers, timeout_s, max_bytes, started)
    except httpx.TimeoutException as exc:
        error = f"agent timed out after {timeout_s:g} s ({type(exc).__name__})"
        return StepOutcome(False, True, None, None, error, _elapsed_ms(started))
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return StepOutcome(False, False, None, None, f"bad agent URL: {exc}", _elapsed_ms(started))
    except httpx.TransportError as exc:
        # Connection refused or reset, DNS failure, broken stream: the agent may come back.
        error = f"could not reach the agent: {type(exc).__name__}: {exc}"
        return StepOutcome(False, True, None, None, error, _elapsed_ms(started))


_client: httpx.Client | None = None
_client_pid: int | None = None


def get_client() -> httpx.Client:
    """One pooled client per worker process (created after fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = httpx.Client(
            follow_redirects=False,  # _post follows only method-preserving redirects
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        )
        _client_pid = os.getpid()
    return _client
