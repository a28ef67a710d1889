"""Failure notifications: the periodic evaluator, delivery through apprise, and apprise's
reading of a channel's URL (at saving and at sending).

`tick_notify` runs once a minute on the dispatch queue (tasks/actors.py), beside
housekeeping, never on the run path: it turns finished runs and stopped schedules
into notices (db/notices.py), commits, then claims and sends their deliveries one
by one, each outside any transaction and within `STEPWISE_NOTIFY_TIMEOUT_S`. It
claims a delivery only while that limit still fits in `SEND_BUDGET_S`, so the tick
ends well within its actor's time limit and holds one dispatcher thread at most;
what is left waits, unclaimed, for the next tick. A delivery is tried once: its
outcome is recorded and a failed one is not sent again (one that timed out may
still have arrived, and a retry could repeat it).

Messages go out as plain text (apprise's `TEXT` body format): each service's
plugin escapes them for its own markup (HTML for e-mail, Slack's `<>&`, Markdown),
so an automation's name or an agent's error cannot add links or formatting.

Options: a channel's URL is read by apprise's own parser, its options (as apprise reads
them) checked against `core.notify.OPTIONS`, and the notifier built from that very
reading, at saving and again at every sending: an option that makes apprise fetch a
URL or read a file (a template, an image, a key file) never reaches it.

Egress: a channel whose URL names an address (json, xml, form, mailto and their TLS
forms) is checked against the agents' policy (core/egress.py, `STEPWISE_AGENT_ALLOW`)
just before sending, and apprise may not follow redirects. Plain-HTTP channels are
pinned to the checked address, like agent calls. TLS channels and mail are not (the
certificate names the host, and apprise resolves the name again itself): every
address the name resolves to must be allowed, and a DNS answer that changes in
between (rebinding) is not caught. The other schemes reach one public service each.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apprise
from apprise import NotifyFormat, NotifyType
from apprise.plugins import url_to_dict as apprise_url_to_dict

from core.egress import Address, EgressPolicy, literal_address
from core.notify import ADDRESSED_SCHEMES, SCHEMES, Message, option_problem, scheme_of, scrub
from core.settings import get_settings
from core.vocabulary import NoticeKind
from db import notices
from db.channels import ChannelTarget
from db.dispatch import beat
from db.session import db_now, once_more_if_disconnected, session_scope
from tasks import metrics

log = logging.getLogger(__name__)
# Seconds of sending per tick: the actor's time limit is 55 s, and one delivery's
# limit (STEPWISE_NOTIFY_TIMEOUT_S, at most 30) always fits.
SEND_BUDGET_S = 40.0
PINNED_SCHEMES = frozenset({"json", "xml", "form"})  # plain HTTP: connected to the checked address


# apprise logs whole URLs (credentials included) while it parses and sends: its
# records never reach the process's handlers; `apprise_log` collects them per call.
_APPRISE = logging.getLogger("apprise")
_APPRISE.propagate = False
# requests (under apprise) logs each request line, path and query included, at DEBUG.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None


# --- apprise: reading a channel's URL ------------------------------------------------------


class _ThreadCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


@contextlib.contextmanager
def apprise_log() -> Iterator[list[str]]:
    """apprise's warnings and errors raised in this thread meanwhile (raw: scrub them)."""
    capture = _ThreadCapture()
    _APPRISE.addHandler(capture)
    if _APPRISE.level == logging.NOTSET or _APPRISE.level > logging.WARNING:
        _APPRISE.setLevel(logging.WARNING)
    try:
        yield capture.lines
    finally:
        _APPRISE.removeHandler(capture)


def apprise_plugin(url: str) -> apprise.NotifyBase | None:
    """apprise's notifier for `url`, or None if apprise cannot read it or it names an
    option Stepwise does not allow (nothing logged)."""
    parsed = _read(url)
    if isinstance(parsed, str):
        return None
    with apprise_log():
        return apprise.Apprise.instantiate(parsed, suppress_exceptions=True)


def _read(url: str) -> dict[str, Any] | str:
    """apprise's reading of `url` (the very values its notifier is built from), or why it
    may not be used: apprise cannot read it, or its scheme or an option, as apprise reads
    them, is not allowed (`core.notify.OPTIONS`: some make apprise fetch or read files)."""
    with apprise_log():
        parsed = apprise_url_to_dict(url)  # type: ignore[no-untyped-call]
    if not parsed:
        return "apprise cannot read this URL (see its wiki)"
    scheme = str(parsed.get("schema", ""))
    if scheme not in SCHEMES or scheme != scheme_of(url):
        return f"use one of {', '.join(f'{s}://' for s in sorted(SCHEMES))}"
    return option_problem(scheme, parsed.get("qsd", {})) or parsed


def destination(plugin: Any) -> tuple[str, int]:
    """The host and port an HTTP or mail channel connects to (the SMTP host for mail)."""
    host = str(getattr(plugin, "smtp_host", "") or plugin.host or "")
    return host, int(plugin.port or (443 if getattr(plugin, "secure", False) else 80))


def url_problem(url: str) -> str | None:
    """Why a channel's (already checked: `core.notify.parse_channel`) URL cannot be saved,
    or None: apprise cannot read it, or what the URL alone shows of its destination (a
    literal address or a known internal name) is refused, as for agent URLs. Names are
    resolved and checked again at sending (`guard`)."""
    parsed = _read(url)
    if isinstance(parsed, str):
        return parsed
    plugin = apprise_plugin(url)
    if plugin is None:
        return "apprise cannot read this URL (see its wiki)"
    if scheme_of(url) not in ADDRESSED_SCHEMES:
        return None
    host, port = destination(plugin)
    reason = get_settings().egress_policy().refusal(host, literal_address(host), port)
    if reason is None:
        return None
    return (
        f"is not allowed: {reason} (internal addresses are refused unless an "
        "administrator allows them with STEPWISE_AGENT_ALLOW)"
    )


# --- the minute tick and delivery ------------------------------------------------------------


def tick_notify() -> int:
    """The minute tick: open notices, then send every pending delivery; returns sent (done
    again once on a connection a database restart closed)."""
    with metrics.tick("notify"):
        return once_more_if_disconnected(_tick_notify)


def _tick_notify() -> int:
    settings = get_settings()
    with session_scope() as session:
        now = db_now(session)
        opened = notices.evaluate_executions(session, now=now, settle_s=settings.notify_settle_s)
        opened += notices.evaluate_schedules(session, now=now, within_days=settings.retention_days)
        notices.expire_stale_claims(session, now=now)
        notices.purge(session, now=now, older_than_days=settings.retention_days)
    sent = send_pending()
    with session_scope() as session:
        beat(session, "notify", opened=opened, sent=sent)
    if opened or sent:
        log.info("notify: %d notice(s) opened, %d delivery(ies) made", opened, sent)
    return sent


def send_pending(*, budget_s: float = SEND_BUDGET_S) -> int:
    """Claim, send and record pending deliveries, oldest first, until none is left or
    the next one might not finish within `budget_s`; returns how many were made."""
    deadline = time.monotonic() + budget_s
    longest_s = get_settings().notify_timeout_s + 1  # deliver() waits at most this long
    done = 0
    while time.monotonic() + longest_s <= deadline:
        with session_scope() as session:
            claimed = notices.claim_deliveries(session, limit=1)
        if not claimed:
            break
        send_and_record(claimed[0])
        done += 1
    return done


def send_and_record(outgoing: notices.Outgoing) -> Outcome:
    """Send one claimed delivery, outside any transaction, then record its outcome."""
    if outgoing.target is None:
        outcome = Outcome(False, "the channel was deleted before this was sent")
    else:
        outcome = deliver(outgoing.target, outgoing.message)
    with session_scope() as session:
        notices.record_outcome(session, outgoing.delivery_id, outcome.error)
    metrics.DELIVERIES.labels("failed" if outcome.error else "sent").inc()
    if outcome.error:
        log.warning("notify: delivery %d failed: %s", outgoing.delivery_id, outcome.error)
    return outcome


def deliver(target: ChannelTarget, message: Message) -> Outcome:
    """Send `message` to the channel within the timeout (name lookups included); any error
    comes back scrubbed of the URL's parts. Never raises."""
    settings = get_settings()
    timeout_s = settings.notify_timeout_s
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notify")
    try:
        future = pool.submit(_send, target.url, message, timeout_s, settings.egress_policy())
        return future.result(timeout=timeout_s + 1)
    except concurrent.futures.TimeoutError:
        # The thread cannot be stopped; apprise's own socket timeouts end it.
        return Outcome(False, f"timed out after {timeout_s} s")
    except Exception as exc:  # a channel's failure must not stop the evaluator
        return Outcome(False, scrub(f"{type(exc).__name__}: {exc}", target.url))
    finally:
        pool.shutdown(wait=False)


def _send(url: str, message: Message, timeout_s: int, policy: EgressPolicy) -> Outcome:
    if isinstance(parsed := _read(url), str):  # a channel saved before an option was refused
        return Outcome(False, f"refused: {parsed}")
    with apprise_log() as lines:
        plugin = apprise_plugin(url)
        if plugin is None:
            return Outcome(False, "apprise cannot read the channel's URL")
        refusal = guard(plugin, scheme_of(url), policy)
        if refusal:
            return Outcome(False, f"refused: {refusal} (STEPWISE_AGENT_ALLOW can allow it)")
        plugin.socket_connect_timeout = float(timeout_s)
        plugin.socket_read_timeout = float(timeout_s)
        plugin.redirects = False  # a redirect would reach an address nobody checked
        ok = post(plugin, message)
    if ok:
        return Outcome(True)
    return Outcome(False, scrub("; ".join(lines) or "apprise reported a failure", url))


# Apprise's type of each notice: the colour and icon Slack, Teams or Discord show it with.
NOTIFY_TYPES = {
    NoticeKind.FAILURE: NotifyType.FAILURE,
    NoticeKind.RECOVERY: NotifyType.SUCCESS,
    NoticeKind.PARKED: NotifyType.WARNING,
    NoticeKind.COMPLETED: NotifyType.INFO,
    NoticeKind.TEST: NotifyType.INFO,
}


def post(plugin: Any, message: Message) -> bool:
    """Send `message` through the notifier as plain text, escaped for the service, with
    apprise's type for its kind (a failure is a failure, a recovery a success)."""
    return bool(
        plugin.notify(
            body=message.body,
            title=message.title,
            body_format=NotifyFormat.TEXT,
            notify_type=NOTIFY_TYPES[message.kind],
        )
    )


def guard(plugin: Any, scheme: str, policy: EgressPolicy) -> str | None:
    """Apply the egress policy to the channel's destination; None when it may be sent.

    Plain-HTTP channels are pinned: the plugin connects to the address checked here
    (the name is kept in the Host header). TLS channels and mail cannot be pinned
    through apprise (the certificate names the host), so every address their host
    resolves to must be allowed.
    """
    if scheme not in ADDRESSED_SCHEMES:
        return None
    host, port = destination(plugin)
    literal = literal_address(host)
    addresses = [literal] if literal is not None else _resolve(host, port)
    if not addresses:
        return f"its host {host} does not resolve"
    verdicts = [(address, policy.refusal(host, address, port)) for address in addresses]
    if scheme in PINNED_SCHEMES:
        allowed = [address for address, reason in verdicts if reason is None]
        if not allowed:
            return verdicts[0][1]
        _pin(plugin, host, port, allowed[0])
        return None
    return next((reason for _, reason in verdicts if reason), None)


def _pin(plugin: Any, host: str, port: int, address: Address) -> None:
    plugin.headers["Host"] = host if port == 80 else f"{host}:{port}"
    plugin.host = str(address) if address.version == 4 else f"[{address}]"


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    found = (literal_address(str(info[4][0]).partition("%")[0]) for info in infos)
    return [address for address in found if address is not None]
