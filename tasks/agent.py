"""The agent client: one HTTP POST per step (what the answer means: `core.outcome`).

Connect errors and timeouts are worth retrying; a redirect that would drop the
POST, a redirect loop or a bad URL fails the execution at once. Bodies are read up
to a cap, so a 10 MB answer costs 64 KiB of memory and is stored truncated.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from core.outcome import StepOutcome, answer_outcome, decode_body

USER_AGENT = "Stepwise/0.1"
MAX_REDIRECTS = 5


def _read_capped(response: httpx.Response, limit: int) -> tuple[str, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return decode_body(b"".join(chunks), limit)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _from_response(response: httpx.Response, limit: int, started: float) -> StepOutcome:
    body, truncated = _read_capped(response, limit)
    return answer_outcome(
        response.status_code,
        response.reason_phrase,
        body,
        truncated=truncated,
        retry_after=response.headers.get("retry-after"),
        duration_ms=_elapsed_ms(started),
    )


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
    return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)


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
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        error = f"bad agent URL: {exc}"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)
    except httpx.TransportError as exc:
        # Connection refused or reset, DNS failure, broken stream: the agent may come back.
        error = f"could not reach the agent: {type(exc).__name__}: {exc}"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)


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
