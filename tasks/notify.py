"""Failure notifications: the periodic evaluator and delivery through apprise.

`tick_notify` runs once a minute on the dispatch queue (tasks/actors.py), beside
housekeeping, never on the run path: it turns finished runs and stopped schedules
into notices (db/notices.py), commits, then claims and sends their deliveries one
by one, each outside any transaction and within `STEPWISE_NOTIFY_TIMEOUT_S`.

Egress: a channel whose URL names an address (json, xml, form, mailto) is checked
against the agents' policy (core/egress.py, `STEPWISE_AGENT_ALLOW`) on every
address its host resolves to, just before sending, and apprise may not follow
redirects. apprise then resolves the name again itself, so unlike agent calls the
checked address is not pinned: a DNS answer that changes in between (rebinding)
is not caught. The other accepted schemes reach one public service each.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import uuid
from dataclasses import dataclass

from core.access import Actor
from core.egress import Address, EgressPolicy, literal_address
from core.notify import ADDRESSED_SCHEMES, Message, scheme_of, scrub
from core.settings import get_settings
from db import notices
from db.channels import ChannelTarget, apprise_log, apprise_plugin
from db.dispatch import beat
from db.session import db_now, session_scope

log = logging.getLogger("stepwise.notify")
BATCH = 20  # deliveries claimed at once: a slow channel holds back at most this many


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None


def tick_notify() -> int:
    """The minute tick: open notices, then send every pending delivery; returns sent."""
    with session_scope() as session:
        now = db_now(session)
        opened = notices.evaluate_runs(session, now=now, settle_s=get_settings().notify_settle_s)
        opened += notices.evaluate_schedules(session)
        notices.expire_stale_claims(session, now=now)
    sent = send_pending()
    with session_scope() as session:
        beat(session, "notify", opened=opened, sent=sent)
    if opened or sent:
        log.info("notify: %d notice(s) opened, %d delivery(ies) made", opened, sent)
    return sent


def send_pending() -> int:
    """Claim, send and record pending deliveries until none is left; returns how many."""
    done = 0
    while True:
        with session_scope() as session:
            batch = notices.claim_deliveries(session, limit=BATCH)
        for outgoing in batch:
            _send_and_record(outgoing)
        done += len(batch)
        if len(batch) < BATCH:
            return done


def send_test(channel_id: uuid.UUID, *, actor: Actor) -> Outcome:
    """An admin's "Send test" to one channel, recorded like every delivery (and audited)."""
    with session_scope() as session:
        outgoing = notices.start_test(session, channel_id, actor=actor)
    return _send_and_record(outgoing)


def _send_and_record(outgoing: notices.Outgoing) -> Outcome:
    if outgoing.target is None:
        outcome = Outcome(False, "the channel was deleted before this was sent")
    else:
        outcome = deliver(outgoing.target, outgoing.message)
    with session_scope() as session:
        notices.record_outcome(session, outgoing.delivery_id, outcome.error)
    if outcome.error:
        log.warning("notify: delivery %d failed: %s", outgoing.delivery_id, outcome.error)
    return outcome


def deliver(target: ChannelTarget, message: Message) -> Outcome:
    """Send `message` to the channel; any error comes back scrubbed of the URL's parts."""
    settings = get_settings()
    try:
        refusal = egress_refusal(target.url, settings.egress_policy())
        if refusal:
            return Outcome(False, f"refused: {refusal} (STEPWISE_AGENT_ALLOW can allow it)")
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="notify")
        future = pool.submit(_notify, target.url, message, settings.notify_timeout_s)
        try:
            ok, lines = future.result(timeout=settings.notify_timeout_s + 1)
        except concurrent.futures.TimeoutError:
            # The thread cannot be stopped; apprise's own socket timeouts end it.
            return Outcome(False, f"timed out after {settings.notify_timeout_s} s")
        finally:
            pool.shutdown(wait=False)
    except Exception as exc:  # a channel's failure must not stop the evaluator
        return Outcome(False, scrub(f"{type(exc).__name__}: {exc}", target.url))
    if ok:
        return Outcome(True)
    detail = "; ".join(lines) or "apprise reported a failure"
    return Outcome(False, scrub(detail, target.url))


def _notify(url: str, message: Message, timeout_s: int) -> tuple[bool, list[str]]:
    with apprise_log() as lines:
        plugin = apprise_plugin(url)
        if plugin is None:
            return False, ["apprise cannot read the channel's URL"]
        plugin.socket_connect_timeout = float(timeout_s)
        plugin.socket_read_timeout = float(timeout_s)
        plugin.redirects = False  # a redirect would reach an address nobody checked
        ok = bool(plugin.notify(body=message.body, title=message.title))
        return ok, list(lines)


def egress_refusal(url: str, policy: EgressPolicy) -> str | None:
    """Why the channel's destination is refused by the egress policy, or None.

    Every address its host resolves to must be allowed (the sender may use any).
    """
    if scheme_of(url) not in ADDRESSED_SCHEMES:
        return None
    plugin = apprise_plugin(url)
    if plugin is None:
        return "apprise cannot read the channel's URL"
    host = str(getattr(plugin, "smtp_host", "") or plugin.host or "")
    port = int(plugin.port or (443 if getattr(plugin, "secure", False) else 80))
    literal = literal_address(host)
    addresses = [literal] if literal is not None else _resolve(host, port)
    if not addresses:
        return f"its host {host} does not resolve"
    for address in addresses:
        reason = policy.refusal(host, address, port)
        if reason:
            return f"{host} {reason}"
    return None


def _resolve(host: str, port: int) -> list[Address | None]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [literal_address(str(info[4][0])) for info in infos]
