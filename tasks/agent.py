"""The agent client: one HTTP POST per step (what the answer means: `core.outcome`).

Calls are asynchronous: a worker process holds every call it has in flight on one
event loop (`tasks/runner.py`) with one pooled `httpx.AsyncClient`. Each call has a
hard wall-clock deadline, the step's timeout, covering connect, redirects and the
whole body: an agent that trickles its answer a byte at a time is cut off at the
deadline like one that never answers, so a step never outlives its lease.

Connect errors and timeouts are worth retrying; a redirect that would drop the
POST, a redirect loop, a bad URL or an address the egress policy refuses fails the
execution at once. Bodies are read up to a cap, so a 10 MB answer costs 64 KiB of
memory and is stored truncated.

Every connection goes through `GuardedBackend`: it resolves the host once, checks
every address against the egress policy (`core.egress`) and connects to the address
it checked, so neither a redirect to an internal host nor a DNS answer that changes
between check and connect (rebinding) reaches an internal service. Errors are stored
in words that do not tell a closed port from a database from a cache.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx

from core.egress import Address, EgressPolicy, literal_address
from core.outcome import StepOutcome, answer_outcome, decode_body, undecodable_body
from core.secrets import SIGNATURE_HEADER, signature_header

USER_AGENT = "Stepwise/0.1"
MAX_REDIRECTS = 5
MAX_KEEPALIVE = 64


class AddressRefused(httpcore.ConnectError):
    """The egress policy refused an address of the host (raised before any connection)."""


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on asyncio's own streams.

    httpcore's AnyIO stream opens a cancel scope for every read and write and builds
    a dict of socket attributes each time the pool asks whether an idle connection
    is still open: a seventh of a worker's CPU under a burst. Here a timeout costs
    something only when one is set (the runner bounds each call as a whole with
    `asyncio.timeout`), and an idle connection is closed when its reader saw EOF.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            self._writer.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:  # SSLError is an OSError; said for the reader
            self._writer.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of idle connections: has the server closed it?
            return self._reader.at_eof() or self._writer.is_closing()
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio streams (`AsyncioStream`)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy admits."""

    def __init__(self, policy: EgressPolicy, backend: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self.backend = backend or AsyncioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        for address in addresses:  # all of them: a mixed answer is refused as a whole
            if (reason := self.policy.refusal(host, address, port)) is not None:
                raise AddressRefused(reason)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self.backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError("no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("a Unix socket is never an agent")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


class NameNotResolved(httpcore.ConnectError):
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


async def _read_capped(response: httpx.Response, limit: int) -> tuple[str, bool]:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    except httpx.DecodingError as exc:  # e.g. declared gzip, and it is not
        reason = f"not {response.headers.get('content-encoding')} as declared: {exc}"
        return undecodable_body(b"".join(chunks), limit, reason)
    return decode_body(b"".join(chunks), limit)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _from_response(response: httpx.Response, limit: int, started: float) -> StepOutcome:
    body, truncated = await _read_capped(response, limit)
    return answer_outcome(
        response.status_code,
        response.reason_phrase,
        body,
        truncated=truncated,
        retry_after=response.headers.get("retry-after"),
        duration_ms=_elapsed_ms(started),
    )


def _origin(url: httpx.URL) -> httpx.URL:
    return url.copy_with(path="/", query=None, fragment=None)


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> tuple[httpx.URL, httpx.URL]:
    """An agent URL and its origin, parsed once (every step of every run posts to it)."""
    parsed = httpx.URL(url)
    return parsed, _origin(parsed)


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    extra: Mapping[str, str],
    timeout_s: float,
    limit: int,
    started: float,
) -> StepOutcome:
    # Only 307/308 keep the POST and its body; 301/302/303 would turn the step into
    # a GET that "succeeds" without the agent ever seeing it, so they fail instead.
    target, origin = _parsed(url)
    for _ in range(MAX_REDIRECTS + 1):
        async with client.stream(
            "POST", target, content=body, headers={**extra, **headers}, timeout=timeout_s
        ) as response:
            location = response.headers.get("location")
            if response.status_code in (307, 308) and location:
                target = response.url.join(location)
                if _origin(target) != origin:
                    extra = {}  # the automation's headers (credentials) stay with its agent
                continue
            if response.status_code in (301, 302, 303):
                error = (
                    f"agent redirected with HTTP {response.status_code} to {location}; "
                    "set the automation's agent URL to the final address"
                )
                return StepOutcome(
                    False, False, response.status_code, None, error, _elapsed_ms(started)
                )
            return await _from_response(response, limit, started)
    error = f"agent redirected more than {MAX_REDIRECTS} times (redirect loop?)"
    return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)


async def call_agent(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    idempotency_key: str,
    timeout_s: float,
    max_bytes: int,
    signing_secret: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> StepOutcome:
    """POST one step to the agent and classify the answer; never raises for HTTP trouble.

    The body is serialised here, once, so that the signature covers the exact bytes
    sent. `timeout_s` is a hard deadline for the whole call, body included.
    `extra_headers` (the automation's, secrets filled in) go to the agent's own
    origin only: a redirect elsewhere does not carry them.
    """
    started = time.monotonic()
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
    if signing_secret is not None:
        headers[SIGNATURE_HEADER] = signature_header(signing_secret, int(time.time()), body)
    try:
        async with asyncio.timeout(timeout_s):
            return await _post(
                client, url, body, headers, extra_headers or {}, timeout_s, max_bytes, started
            )
    except TimeoutError:
        error = f"agent timed out after {timeout_s:g} s (no full answer by the step's deadline)"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)
    except httpx.TimeoutException as exc:
        error = f"agent timed out after {timeout_s:g} s ({type(exc).__name__})"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        error = f"bad agent URL: {exc}"
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)
    except httpx.TransportError as exc:
        if isinstance(exc.__cause__, AddressRefused):
            error = (
                f"the agent's address is not allowed: {exc.__cause__} "
                "(an administrator can allow it with STEPWISE_AGENT_ALLOW)"
            )
            return StepOutcome.failure(error, _elapsed_ms(started), retryable=False)
        # Refused, reset, not HTTP: said in the same words, so that errors stored
        # with runs cannot map which ports answer on the agent's host.
        error = (
            "could not resolve the agent's host name"
            if isinstance(exc.__cause__, NameNotResolved)
            else "could not reach the agent, or it did not answer in HTTP"
        )
        return StepOutcome.failure(error, _elapsed_ms(started), retryable=True)


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing.

    One client serves every workspace's runs on a worker: a cookie one agent set must
    never travel with another run's call. (Parsing Set-Cookie also cost a worker a
    few percent of its CPU under a burst.)
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def make_client(policy: EgressPolicy, *, max_connections: int = 100) -> httpx.AsyncClient:
    """A pooled async client whose every connection the egress policy checks.

    Must be used on one event loop (the runner's, or a test's `asyncio.run`).
    """
    # httpcore looks at every pooled connection for each request: keeping a
    # thousand idle ones alive costs more CPU than opening a connection again.
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(max_connections, MAX_KEEPALIVE),
    )
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx has no parameter for httpcore's network backend; the pool it built holds
    # it (httpx and httpcore are pinned; tests/test_egress.py fails if this moves).
    pool = transport._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    pool._network_backend = GuardedBackend(policy)
    client = httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,  # _post follows only method-preserving redirects
        headers={"User-Agent": USER_AGENT},
        trust_env=False,  # no proxy from the environment: it would carry calls past the guard
    )
    # httpx's setter would copy the cookies into a fresh store; this one must stay.
    client._cookies = _NoCookies()
    return client
