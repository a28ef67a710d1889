"""Notifications as pure values: which channel URLs are accepted, how one is shown,
what a notice says, and how a run's outcome moves an automation's failure streak.

A channel is an apprise URL (https://github.com/caronc/apprise/wiki). It may hold
credentials anywhere (user, password, host, path, query: `slack://T/B/token`), so
it is sealed at rest and shown only as `redacted`: the scheme and, for the schemes
whose host is an address people chose, that host. Any text that came back from a
delivery is passed through `scrub` before it is stored or logged.

Only schemes whose destination Stepwise can check against the egress policy (an
address people chose: json, xml, form, mailto) or that always go to one public
service (Slack, Discord, Telegram, Pushover) are accepted; apprise's other
services may reach any host and are refused rather than left unguarded. Each scheme
accepts only the options listed in `OPTIONS`: apprise has options that make it fetch
a URL or read a file itself (`template`, `pgppub`, `attach`, …), outside the egress
guard, and those are refused with every option not known to be harmless.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from core.errors import FieldError, ValidationFailed
from core.limits import MAX_CHANNEL_URL, MAX_NAME, MAX_NOTICE_TEXT
from core.text import text_errors
from core.vocabulary import CompletedReason, NoticeKind

# Schemes whose host is the address connected to (checked against the egress policy).
ADDRESSED_SCHEMES = frozenset(
    {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos"}
)
# Schemes that always reach one public service (the host part is a token, never shown).
SERVICE_SCHEMES = frozenset({"slack", "discord", "tgram", "pover"})
SCHEMES = ADDRESSED_SCHEMES | SERVICE_SCHEMES
# The query options each scheme may carry (apprise reads them lower-cased), chosen
# because none of them makes apprise fetch, read or write anything: no templates,
# images, attachments, key files, key lookups, stores, nor TLS checks turned off.
_WEBHOOK_OPTIONS = frozenset({"method"})
_MAIL_OPTIONS = frozenset({"to", "cc", "bcc", "from", "name", "reply", "mode", "smtp"})
_OPTIONS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("json", "jsons", "xml", "xmls", "form", "forms"), _WEBHOOK_OPTIONS),
    **dict.fromkeys(("mailto", "mailtos"), _MAIL_OPTIONS),
    "slack": frozenset({"to", "footer", "blocks", "timestamp"}),
    "discord": frozenset({"thread", "footer", "fields", "tts"}),
    "tgram": frozenset({"to", "thread", "topic", "silent", "preview"}),
    "pover": frozenset({"to", "priority", "sound", "expire", "interval", "url", "url_title"}),
}
# `format` (the channel's markup) is every scheme's; messages are sent as text anyway.
OPTIONS = {scheme: options | {"format"} for scheme, options in _OPTIONS.items()}
# Webhooks also take `+Header=`, `-param=` and `:field=` (headers, query, payload fields).
PREFIXED_OPTIONS = frozenset({"json", "jsons", "xml", "xmls", "form", "forms"})
REDACTED = "…"


@dataclass(frozen=True)
class ChannelInput:
    """A channel as an admin typed it, checked: a name and an apprise URL."""

    name: str
    url: str


def parse_channel(name: str, url: str) -> ChannelInput:
    """The checked channel; ValidationFailed names the field (the URL is never echoed)."""
    if errors := text_errors([("name", name), ("url", url)]):
        raise ValidationFailed(errors)
    name = name.strip()
    url = url.strip()
    errors = []
    if not name or len(name) > MAX_NAME:
        errors.append(FieldError("name", f"give a name of 1 to {MAX_NAME} characters"))
    problem = _url_problem(url)
    if problem:
        errors.append(FieldError("url", problem))
    if errors:
        raise ValidationFailed(errors)
    return ChannelInput(name=name, url=url)


def _url_problem(url: str) -> str | None:
    if not url or len(url) > MAX_CHANNEL_URL:
        return f"give an apprise URL of 1 to {MAX_CHANNEL_URL} characters"
    if scheme_of(url) not in SCHEMES:
        return f"use one of {', '.join(f'{s}://' for s in sorted(SCHEMES))}"
    if not _host(url):
        return "the URL names no host or service token"
    return option_problem(scheme_of(url), query_options(url))


def query_options(url: str) -> list[str]:
    """The option names of `url`'s query as apprise reads them (split on `&` and `;`,
    decoded, lower-cased)."""
    query = url.partition("?")[2].partition("#")[0]
    pairs = (pair for part in query.split("&") for pair in part.split(";"))
    return [unquote(pair.partition("=")[0]).lower().strip() for pair in pairs]


def option_problem(scheme: str, options: Iterable[str]) -> str | None:
    """Why `options` may not be used with `scheme`, or None. The option is not named: a
    name without a value could be a credential, and the URL is never echoed."""
    allowed = OPTIONS.get(scheme, frozenset())
    for option in options:
        if not option:
            continue
        if option[0] in "+-:" and scheme in PREFIXED_OPTIONS:
            continue
        if option not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return f"uses an option not allowed for {scheme}:// (allowed: {listed})"
    return None


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def redact(url: str) -> str:
    """What people may see of a channel URL: `json://hooks.example.com/…`, `slack://…`."""
    scheme = scheme_of(url)
    if scheme in ADDRESSED_SCHEMES:
        host = _host(url)
        return f"{scheme}://{host}/{REDACTED}" if host else f"{scheme}://{REDACTED}"
    return f"{scheme}://{REDACTED}"


def secret_parts(url: str) -> set[str]:
    """Every piece of `url` that might be a credential, for `scrub` (at least 3 characters)."""
    rest = url.partition("://")[2]
    pieces = set(re.split(r"[/:@?&=#+,]", rest)) | set(re.split(r"[/:@?&=#+,]", unquote(rest)))
    pieces |= {rest, unquote(rest), url}
    if scheme_of(url) in ADDRESSED_SCHEMES:
        pieces.discard(_host(url))  # shown in the redacted form anyway; errors read better
    return {p for p in pieces if len(p) >= 3}


def scrub(text: str, url: str) -> str:
    """`text` with every possible credential of `url` replaced, cut to the stored size."""
    for part in sorted(secret_parts(url), key=len, reverse=True):
        text = text.replace(part, "REDACTED")
    return text[:MAX_NOTICE_TEXT]


# --- what a notice says ------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    kind: NoticeKind = NoticeKind.TEST  # what apprise calls its type: failure, success, ...


def message_for(kind: NoticeKind, automation: str, summary: str) -> Message:
    """The title and body sent for a notice about the automation named `automation`."""
    titles = {
        NoticeKind.FAILURE: f"Stepwise: {automation} is failing",
        NoticeKind.RECOVERY: f"Stepwise: {automation} recovered",
        NoticeKind.PARKED: f"Stepwise: a schedule of {automation} was parked",
        NoticeKind.COMPLETED: f"Stepwise: a schedule of {automation} completed",
        NoticeKind.TEST: "Stepwise: test notification",
    }
    return Message(titles[kind], summary[:MAX_NOTICE_TEXT], kind)


def failure_summary(streak: int, error: str | None) -> str:
    runs = "1 run" if streak == 1 else f"{streak} consecutive runs"
    return f"{runs} failed. Last error: {error or 'none recorded'}"[:MAX_NOTICE_TEXT]


# --- the failure streak --------------------------------------------------------------------


@dataclass(frozen=True)
class Streak:
    """An automation's state as the evaluator keeps it between passes."""

    failures: int
    last_failed: str | None  # the execution id that failed last
    open_incident: bool


@dataclass(frozen=True)
class StreakChange:
    """What one finished run did to the streak: the new state and the notice to open, if any."""

    streak: Streak
    notice: NoticeKind | None


def advance(streak: Streak, *, execution_id: str, failed: bool, threshold: int) -> StreakChange:
    """The streak after one finished run, in finishing order.

    A failure notice opens when the streak reaches `threshold` and no incident is open;
    while one is open, further failures send nothing. The same run failing again
    after a retry is still one failed run. A success ends the streak and, if an
    incident is open, sends the recovery notice.
    """
    if not failed:
        notice = NoticeKind.RECOVERY if streak.open_incident else None
        return StreakChange(Streak(0, None, open_incident=False), notice)
    failures = streak.failures + (0 if execution_id == streak.last_failed else 1)
    opens = failures >= threshold and not streak.open_incident
    state = Streak(failures, execution_id, open_incident=streak.open_incident or opens)
    return StreakChange(state, NoticeKind.FAILURE if opens else None)


def stop_notice(reason: str) -> NoticeKind:
    """The notice for a schedule that stopped for good: parked (Stepwise could not plan
    it, db/dispatch.py) or completed (it reached its end)."""
    return NoticeKind.PARKED if reason == CompletedReason.PARKED else NoticeKind.COMPLETED
