"""The agent client: one HTTP POST per step (what the answer means: `core.outcome`).

Calls are asynchronous: a worker process holds every call it has in flight on one
event loop (`tasks/runner.py`) with a few pooled aiohttp sessions. Each call has a
hard wall-clock deadline, the step's timeout, covering connect, redirects and the
whole body: an agent that trickles its answer a byte at a time is cut off at the
deadline like one that never answers, so a step never outlives its lease.

Why aiohttp here, when the rest of Stepwise speaks httpx: an agent call is the
runner's hot path, and aiohttp (its parser is C) costs a fraction of the CPU per call
that httpx and httpcore cost, which were the largest share of a worker's CPU under a
burst (the figures are in bench/RESULTS.md).

Connect errors and timeouts are worth retrying; a redirect that would drop the
POST, a redirect loop, a bad URL, a redirect to a non-HTTP URL or to one with a user
name or password, a header value with a line break (a secret saved before they were
refused) or an address the egress policy refuses fails the execution at once.
Bodies are read up to a cap, so a 10 MB answer costs 64 KiB of
memory and is stored truncated.

Every connection is checked against the egress policy (`core.egress`):
`GuardedResolver` resolves a host name once and checks every address before the
connector connects to the addresses it returned, so neither a redirect to an
internal host nor a DNS answer that changes between check and connect (rebinding)
reaches an internal service; an address written in the URL (which aiohttp does not
resolve) is checked by `AgentClient.refusal` before each request, redirects
included. Errors are stored in words that do not tell a closed port from a
database from a cache.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from core.egress import Address, EgressPolicy, literal_address
from core.outcome import StepOutcome, answer_outcome, decode_body, undecodable_body
from core.secrets import SIGNATURE_HEADER, signature_header
from core.text import json_bytes

USER_AGENT = "Stepwise/0.1"
MAX_REDIRECTS = 5
MAX_KEEPALIVE_S = 15.0  # an idle connection is closed after this long
READ_CHUNK = 65536
MAX_REFUSALS_KEPT = 4096


class AddressRefused(OSError):
    """The egress policy refused an address of the host (raised before any connection)."""


class NameNotResolved(OSError):
    """The agent's host name has no address (DNS failure): stored as such, retried."""


async def _resolve(host: str, port: int) -> list[Address]:
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise NameNotResolved(str(exc)) from exc
    found = [literal_address(str(info[4][0])) for info in infos]
    return list(dict.fromkeys(a for a in found if a is not None))


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, answering only with addresses the policy admits.

    The connector connects to exactly the addresses returned here: what was checked
    is what is connected to. A host with any refused address is refused as a whole.
    """

    def __init__(self, policy: EgressPolicy):
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await _resolve(host, port)
        for address in addresses:
            if (reason := self.policy.refusal(host, address, port)) is not None:
                raise AddressRefused(reason)
        if not addresses:
            raise NameNotResolved(f"{host} has no address")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class AgentClient:
    """A pooled aiohttp session whose every connection the egress policy checks.

    Must be created and used on one event loop (the runner's, or a test's
    `asyncio.run`); `async with` closes it.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.policy = policy
        # The policy's answer for each (host, port) called: the same for the client's life.
        self.refusals: dict[tuple[str, int], str | None] = {}
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(policy),
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=MAX_KEEPALIVE_S,
            ttl_dns_cache=10,  # what the resolver answered, checked, for ten seconds
            ssl=ssl_context if ssl_context is not None else True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # One session serves every workspace's runs on a worker: a cookie one agent
            # set must never travel with another run's call.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment: it would carry calls past the guard
            timeout=aiohttp.ClientTimeout(total=None),  # `call_agent` bounds each call
            auto_decompress=True,
            raise_for_status=False,
        )

    def refusal(self, url: URL) -> str | None:
        """Why the policy refuses the address written in `url`, if it is one.

        A host name is checked by `GuardedResolver` when it is resolved; aiohttp
        connects to an address in the URL without resolving it, so it is checked here.
        """
        host, port = url.raw_host or "", url.port or 0
        try:
            return self.refusals[host, port]
        except KeyError:
            pass
        address = literal_address(host)
        refusal = None if address is None else self.policy.refusal(host, address, port)
        if len(self.refusals) >= MAX_REFUSALS_KEPT:
            self.refusals.clear()
        self.refusals[host, port] = refusal
        return refusal

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[str, bool]:
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = await response.content.read(READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except aiohttp.ClientPayloadError as exc:  # e.g. declared gzip, and it is not
        reason = f"not {response.headers.get('Content-Encoding')} as declared: {exc}"
        return undecodable_body(b"".join(chunks), limit, reason)
    return decode_body(b"".join(chunks), limit)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _from_response(
    response: aiohttp.ClientResponse, limit: int, started: float
) -> StepOutcome:
    body, truncated = await _read_capped(response, limit)
    return answer_outcome(
        response.status,
        response.reason or "",
        body,
        truncated=truncated,
        retry_after=response.headers.get("Retry-After"),
        duration_ms=_elapsed_ms(started),
    )


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> tuple[URL, URL]:
    """An agent URL and its origin, parsed once (every step of every run posts to it)."""
    parsed = URL(url)
    return parsed, parsed.origin()


class _Refused(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class _Unsendable(Exception):
    """The call cannot be made as the agent or a secret has it: fails the step for good."""


_BREAKS = frozenset("\r\n\x00")


def _redirect_target(at: URL, location: str) -> URL:
    """Where a 307/308 sends the call; _Unsendable for a place no call may go (the agent
    chose it: aiohttp would raise a ValueError that no retry can cure)."""
    try:
        target = at.join(URL(location))
    except ValueError:
        raise _Unsendable("the agent redirected to a URL that cannot be read") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise _Unsendable("the agent redirected to a URL that is not http or https")
    if target.user is not None or target.password is not None:
        raise _Unsendable("the agent redirected to a URL with a user name or password")
    return target


async def _post(
    client: AgentClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    extra: Mapping[str, str],
    limit: int,
    started: float,
) -> StepOutcome:
    # Only 307/308 keep the POST and its body; 301/302/303 would turn the step into
    # a GET that "succeeds" without the agent ever seeing it, so they fail instead.
    try:
        target, origin = _parsed(url)
    except ValueError as exc:
        raise aiohttp.InvalidURL(url, str(exc)) from exc
    if not target.absolute or target.scheme not in ("http", "https"):
        raise aiohttp.InvalidURL(url, "not an http or https URL")
    if any(c in value for value in extra.values() for c in _BREAKS):
        # A secret saved before line breaks were refused (db/secrets.py): never sent.
        raise _Unsendable("a request header's value holds a line break (set its secret again)")
    for _ in range(MAX_REDIRECTS + 1):
        if (reason := client.refusal(target)) is not None:
            raise _Refused(reason)
        async with client.session.post(
            target, data=body, headers={**extra, **headers}, allow_redirects=False
        ) as response:
            location = response.headers.get("Location")
            if response.status in (307, 308) and location:
                target = _redirect_target(response.url, location)
                if target.origin() != origin:
                    extra = {}  # the automation's headers (credentials) stay with its agent
                continue
            if response.status in (301, 302, 303):
                error = (
                    f"agent redirected with HTTP {response.status} to {location}; "
                    "set the automation's agent URL to the final address"
                )
                return StepOutcome(False, False, response.status, None, error, _elapsed_ms(started))
            return await _from_response(response, limit, started)
    error = f"agent redirected more than {MAX_REDIRECTS} times (redirect loop?)"
    return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)


def _refused(reason: str, started: float) -> StepOutcome:
    error = (
        f"the agent's address is not allowed: {reason} "
        "(an administrator can allow it with STEPWISE_AGENT_ALLOW)"
    )
    return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)


async def call_agent(
    client: AgentClient,
    url: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str,
    timeout_s: float,
    max_bytes: int,
    signing_secret: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    traceparent: str | None = None,
) -> StepOutcome:
    """POST one step to the agent and classify the answer; never raises for HTTP trouble.

    The body is serialised here, once, so that the signature covers the exact bytes
    sent. `timeout_s` is a hard deadline for the whole call, body included.
    `extra_headers` (the automation's, secrets filled in) go to the agent's own
    origin only: a redirect elsewhere does not carry them. `traceparent` (tracing on)
    joins the agent's spans to the run's trace.
    """
    started = time.monotonic()
    body = json_bytes(payload)
    headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
    if signing_secret is not None:
        headers[SIGNATURE_HEADER] = signature_header(signing_secret, int(time.time()), body)
    if traceparent is not None:
        headers["traceparent"] = traceparent
    try:
        async with asyncio.timeout(timeout_s):
            return await _post(client, url, body, headers, extra_headers or {}, max_bytes, started)
    except TimeoutError:
        error = f"agent timed out after {timeout_s:g} s (no full answer by the step's deadline)"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)
    except _Refused as refused:
        return _refused(refused.reason, started)
    except _Unsendable as exc:
        return StepOutcome.failure(str(exc), _elapsed_ms(started), retryable=False)
    except aiohttp.InvalidURL as exc:
        error = f"bad agent URL: {exc}"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)
    except (aiohttp.ClientError, OSError) as exc:
        # aiohttp's connection errors are OSErrors too; what went wrong is their cause.
        cause = exc.__cause__ if isinstance(exc, aiohttp.ClientError) else exc
        if isinstance(cause, AddressRefused):
            return _refused(str(cause), started)
        # Refused, reset, not HTTP: said in the same words, so that errors stored
        # with runs cannot map which ports answer on the agent's host.
        error = (
            "could not resolve the agent's host name"
            if isinstance(cause, NameNotResolved)
            else "could not reach the agent, or it did not answer in HTTP"
        )
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)
    except ValueError as exc:
        # Whatever else aiohttp refuses to send (a certificate error is a ClientError,
        # above) is refused again on every try: one failure, said without its text (it
        # could quote a header's value).
        error = f"the call could not be made ({type(exc).__name__} in the HTTP client)"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)
