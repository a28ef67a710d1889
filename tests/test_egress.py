"""The SSRF guard: no agent URL, redirect or DNS answer reaches an internal address.

The pure policy (`core.egress`) is tried with every class of internal address in the
forms a resolver accepts; the guard in `tasks/agent.py` is tried with real local
HTTP servers: a refused address is never connected to, a 307 from an allowed agent
to an internal one is refused, and the address connected to is the one checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.egress import EgressPolicy, literal_address, parse_allowlist
from core.errors import ConfigError, ValidationFailed
from db import automations
from db.runs import RunMessage
from db.session import session_scope
from stepwise.demo_agent import AgentServer, Reply
from tasks.agent import AgentClient, call_agent
from tasks.lifecycle import stop_runner
from tasks.send import send_run
from testkit.factories import (
    ADMIN,
    automation_input,
    execution,
    make_automation,
    make_execution,
    step_runs,
    table_snapshot,
)
from testkit.waiting import wait_for

STRICT = EgressPolicy()
INTERNAL_HOSTS = [
    "169.254.169.254",  # cloud metadata
    "127.0.0.1",
    "127.1",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "[::1]",
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (CGNAT)
    "0.0.0.0",
    "[::]",
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "[fd00::1]",  # unique-local
    "[fe80::1]",  # link-local
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:169.254.169.254]",
    "[64:ff9b::a00:5]",  # NAT64 of 10.0.0.5
    "[2002:a00:5::]",  # 6to4 of 10.0.0.5
    "localhost",
    "api.localhost",
    "metadata.google.internal",
    # spellings a resolver folds (IDNA: compatibility digits, ideographic full stops; a
    # trailing dot)
    "①②⑦.0.0.1",
    "127。0。0。1",
    "127.0.0.1.",
    "localhost.",
    "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54",  # full-width letters
    "api.localhost.",
]


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_every_internal_address_is_refused_in_every_spelling(host: str) -> None:
    assert STRICT.refusal_of_url(f"http://{host}:8080/agent") is not None


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700:4700::1111]", "agent.example.com"])
def test_public_addresses_and_names_pass(host: str) -> None:
    assert STRICT.refusal_of_url(f"https://{host}/agent") is None


def test_spellings_of_loopback_read_as_loopback() -> None:
    loopback = ipaddress.IPv4Address("127.0.0.1")
    assert {literal_address(h) for h in ("0x7f000001", "2130706433", "0177.0.0.1")} == {loopback}


def test_the_allowlist_opens_hosts_addresses_networks_and_ports() -> None:
    policy = parse_allowlist("127.0.0.1:8787, 10.0.0.0/8 agent.internal [::1]:9000")
    loopback, v6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert policy.refusal("127.0.0.1", loopback, 8787) is None
    assert policy.refusal("127.0.0.1", loopback, 6379) is not None  # another port stays shut
    assert policy.refusal("x", ipaddress.ip_address("10.9.8.7"), 443) is None
    assert policy.refusal("agent.internal", ipaddress.ip_address("192.168.0.9"), 80) is None
    assert policy.refusal("::1", v6, 9000) is None
    assert policy.refusal("::1", v6, 9001) is not None


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "host:99999", "a/b", "[::1"])
def test_a_bad_allowlist_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="STEPWISE_AGENT_ALLOW"):
        parse_allowlist(bad)


# --- save time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "internal address"),
        ("http://10.0.0.5/agent", "internal address"),
        ("http://0x0a000005:6379/", "internal address"),  # 10.0.0.5 (loopback is allowed here)
        ("http://[::1]/agent", "internal address"),
        ("http://localhost:5432/", "host name localhost is internal"),
        ("http://①⓪.0.0.5/agent", "internal address"),
        ("http://10。0。0。5/agent", "internal address"),
        ("http://10.0.0.5./agent", "internal address"),
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:5432/", "is internal"),
        ("http://alice:s3cret@agent.example.com/", "user name or password"),
        ("http://exa mple.com/", "spaces"),
        ("http://agent.example.com:99999/", "port"),
        ("http://agent.example.com:0/", "port"),
        ("http://exa%20mple.com/", "host name that cannot exist"),
        ("http://agent..example.com/", "host name that cannot exist"),
        ("http://-agent.example.com/", "host name that cannot exist"),
        ("http://[::1/agent", "not a valid URL"),
    ],
)
def test_an_internal_or_credentialed_url_is_refused_at_save_and_nothing_written(
    db: None, url: str, message: str
) -> None:
    before = table_snapshot()
    with pytest.raises(ValidationFailed) as refused, session_scope() as session:
        automations.create_automation(session, automation_input(agent_url=url), actor=ADMIN)
    assert message in (refused.value.for_field("agent_url") or "")
    assert table_snapshot() == before


# --- call time -----------------------------------------------------------------------


@pytest.fixture
def inside() -> Iterator[AgentServer]:
    """An internal service on loopback that must never be reached: it records every call."""
    server = AgentServer().start()
    server.responder = lambda call: Reply(200, {"secret": "internal answer"})
    yield server
    server.stop()


def _port(url: str) -> int:
    return httpx.URL(url).port or 80


def _call(policy: EgressPolicy, *urls: str) -> Any:
    """Post one step to each URL through a guarded client; the last outcome (or all)."""

    async def calls() -> list[Any]:
        async with AgentClient(policy) as client:
            return [
                await call_agent(
                    client, url, {"step": 1}, idempotency_key="k:1", timeout_s=5, max_bytes=65536
                )
                for url in urls
            ]

    outcomes = asyncio.run(calls())
    return outcomes[0] if len(outcomes) == 1 else outcomes


def test_a_refused_address_is_never_connected_to(inside: AgentServer) -> None:
    outcome = _call(STRICT, inside.url)
    assert not outcome.ok and not outcome.retryable
    assert outcome.error.startswith("the agent's address is not allowed")
    assert inside.calls == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/x",
        "http://[::ffff:127.0.0.1]:{port}/x",
        "http://localhost:{port}/x",
    ],
)
def test_a_307_from_an_allowed_agent_to_an_internal_address_is_refused(
    agent: AgentServer, inside: AgentServer, target: str
) -> None:
    # given an agent the deployment allows, which redirects (307 keeps the POST) inside
    location = target.format(port=_port(inside.url))
    agent.responder = lambda call: Reply(307, "", headers={"Location": location})
    policy = parse_allowlist(f"127.0.0.1:{_port(agent.url)}")
    # when a step is posted to it
    outcome = _call(policy, agent.url)
    # then the redirect's target is refused before any connection, for good
    assert not outcome.ok and not outcome.retryable
    assert "not allowed" in outcome.error
    assert len(agent.calls) == 1
    assert inside.calls == []


def _dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """The system resolver, answering `answers` for these names (as a DNS server
    would, rebinding included) and as usual for every other; returns the names asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))
            for address in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_the_address_connected_to_is_the_address_checked(
    agent: AgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a name that only this machine's DNS answers (with loopback), allowed
    looked_up = _dns(monkeypatch, {"agent.test": ["127.0.0.1"]})
    port = _port(agent.url)
    policy = parse_allowlist(f"agent.test:{port}")
    # when the agent is called by that name, twice
    outcomes = _call(policy, f"http://agent.test:{port}/agent", f"http://agent.test:{port}/agent")
    # then the name was looked up once per connection and the calls reached the
    # address the guard checked (had anything else looked it up, it would have failed)
    assert [o.ok for o in outcomes] == [True, True]
    assert looked_up == ["agent.test"]  # one lookup, by the guard, for both calls
    assert len(agent.calls) == 2


def test_a_name_whose_lookup_turns_internal_is_refused_before_connecting(
    inside: AgentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a public-looking name whose DNS answer is an internal address (rebinding)
    _dns(monkeypatch, {"agent.example.com": ["93.184.216.34", "127.0.0.1"]})
    # when a step is posted to it, with a policy that allows no internal address
    outcome = _call(STRICT, f"http://agent.example.com:{_port(inside.url)}/agent")
    # then the mixed answer is refused as a whole and nothing was connected to
    assert not outcome.ok and not outcome.retryable
    assert outcome.error.startswith("the agent's address is not allowed")
    assert inside.calls == []


def test_errors_do_not_tell_a_closed_port_from_a_non_http_service() -> None:
    # given a closed port and a port whose service answers in its own protocol
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    talker = socket.socket()
    talker.bind(("127.0.0.1", 0))
    talker.listen()

    def speak() -> None:
        conn, _ = talker.accept()
        conn.sendall(b"-ERR unknown command 'POST'\r\n")  # what Redis says
        conn.close()

    threading.Thread(target=speak, daemon=True).start()
    allowed = parse_allowlist("127.0.0.1")
    # when the agent URL points at each
    refused, spoken = _call(
        allowed, f"http://127.0.0.1:{closed_port}/", f"http://127.0.0.1:{talker.getsockname()[1]}/"
    )
    talker.close()
    # then both are stored in the same words, with nothing from the service
    assert (
        refused.error == spoken.error == "could not reach the agent, or it did not answer in HTTP"
    )


@pytest.fixture
def only_the_agent(agent: AgentServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Workers whose allowlist names only the agent's port (the suite allows all loopback)."""
    from core.settings import get_settings

    monkeypatch.setenv("STEPWISE_AGENT_ALLOW", f"127.0.0.1:{_port(agent.url)}")
    get_settings.cache_clear()
    stop_runner()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    stop_runner()


def test_a_run_redirected_inside_fails_and_stores_nothing_from_inside(
    worker: Any, agent: AgentServer, inside: AgentServer, only_the_agent: None
) -> None:
    # given an allowed agent that redirects every step to an internal service
    agent.responder = lambda call: Reply(307, "", headers={"Location": inside.url})
    automation_id = make_automation(agent_url=agent.url, steps=1)
    execution_id = make_execution(automation_id)
    # when the run is sent to the workers
    send_run(RunMessage(execution_id, 3))
    done = wait_for(lambda: (e := execution(execution_id)).status == "failed" and e)
    # then it failed at once, and nothing of the internal service was stored
    assert done.attempt == 1
    assert "not allowed" in (done.error or "")
    (step,) = step_runs(execution_id)
    assert "internal answer" not in repr(step.response_body) + repr(step.error)
    assert inside.calls == []
