"""Failure notifications: channels, notices once per incident, delivery through apprise to a
real local SMTP server and a real local HTTP receiver, and no channel URL in clear."""

from __future__ import annotations

import email
import email.policy
import html
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from apprise.manager_plugins import NotificationManager
from sqlalchemy import select, text, update

from core.errors import Forbidden, NotFound, ValidationFailed
from core.notify import (
    OPTIONS,
    SCHEMES,
    ChannelInput,
    Message,
    Streak,
    advance,
    parse_channel,
    redact,
    scrub,
)
from core.settings import get_settings
from core.vocabulary import AuditAction, DeliveryStatus, ExecutionStatus, NoticeKind, Role
from db import channels, notices
from db.audit import AuditFilters, list_audit
from db.models import Base, Delivery, Execution, Notice, Schedule
from db.session import db_now, get_engine, session_scope
from service import channels as channel_service
from tasks import notify
from testkit.factories import (
    ADMIN,
    add_executions,
    make_automation,
    make_channel,
    make_schedule,
    make_workspace,
    person,
    row_counts,
)
from testkit.prometheus import metric
from testkit.receivers import Mailbox, Receiver, http_receiver, smtp_server

SMTP_PASSWORD = "pw-Zq81smtp"
HOOK_PASSWORD = "pw-Xk42hook"
HOOK_PATH_SECRET = "tok-Jm93path"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


def mail_url(box: Mailbox) -> str:
    return (
        f"mailto://alerts:{SMTP_PASSWORD}@127.0.0.1:{box.port}"
        "?to=ops@example.com&from=stepwise@example.com&mode=insecure"
    )


def receiver_url(receiver: Receiver) -> str:
    return f"json://hook:{HOOK_PASSWORD}@127.0.0.1:{receiver.port}/hooks/{HOOK_PATH_SECRET}"


def mail_parts(raw: str) -> dict[str, str]:
    """A received message's parts by content type, decoded."""
    message = email.message_from_string(raw, policy=email.policy.default)
    return {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart()
    }


def notify_on(automation_id: uuid.UUID, channel_ids: list[uuid.UUID], threshold: int = 1) -> None:
    channel_service.set_notifications(automation_id, channel_ids, threshold, actor=ADMIN)


def later(seconds: int = 0) -> datetime:
    """A time after the rule was made, as the database's clock reads it."""
    with session_scope() as session:
        return db_now(session) + timedelta(seconds=1 + seconds)


def runs(
    automation_id: uuid.UUID, *statuses: str, start: datetime | None = None
) -> list[uuid.UUID]:
    """Finished runs of the automation, one a second in this order, after the rule was made."""
    start = start or later()
    return add_executions(
        automation_id,
        [
            {
                "status": status,
                "queued_at": start + timedelta(seconds=n),
                "finished_at": start + timedelta(seconds=n, milliseconds=500),
                "error": "agent answered 500" if status == ExecutionStatus.FAILED else None,
            }
            for n, status in enumerate(statuses)
        ],
    )


OUTCOMES = ("sent", "failed")  # of a delivery, as its metric counts it


def evaluate(at: datetime | None = None) -> int:
    """One evaluator pass as the minute tick makes it, at `at` (default: well after the runs)."""
    with session_scope() as session:
        now = at or db_now(session) + timedelta(minutes=5)
        opened = notices.evaluate_executions(session, now=now, settle_s=5)
        opened += notices.evaluate_schedules(session, now=now, within_days=90)
    notify.send_pending()
    return opened


def deliveries() -> list[Delivery]:
    with session_scope() as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        session.expunge_all()
        return list(rows)


def fail_again(execution_id: uuid.UUID, at: datetime) -> None:
    """The run retried (Retry on its page) and failing once more, at `at`."""
    with session_scope() as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(status=ExecutionStatus.FAILED, attempt=Execution.attempt + 1, finished_at=at)
        )


# --- the streak, as a pure function --------------------------------------------------------


def test_the_streak_opens_one_notice_at_the_threshold_and_recovers_once() -> None:
    state, kinds = Streak(0, None, open_incident=False), []
    for run, failed in [("a", True), ("a", True), ("b", True), ("c", True), ("d", False)]:
        step = advance(state, execution_id=run, failed=failed, threshold=2)
        state, kinds = step.streak, [*kinds, step.notice]
    # a's retry is still one failed run; b makes two; c adds nothing; d recovers
    assert kinds == [None, None, NoticeKind.FAILURE, None, NoticeKind.RECOVERY]
    assert state == Streak(0, None, open_incident=False)


def test_channel_urls_are_checked_and_shown_redacted() -> None:
    with pytest.raises(ValidationFailed, match="Apprise URL: use one of"):
        parse_channel("ops", "gotify://internal.example/token")
    with pytest.raises(ValidationFailed, match="name"):
        parse_channel(" ", "json://example.com/x")
    assert redact("json://u:p@hooks.example.com:8443/t/secret?x=1") == "json://hooks.example.com/…"
    assert redact("slack://TA/TB/TC/#ops") == "slack://…"
    url = "json://u:p4ss@hooks.example.com/x"
    scrubbed = scrub("login u:p4ss refused by hooks.example.com", url)
    assert scrubbed == "login u:REDACTED refused by hooks.example.com"  # 1-2 chars stay
    assert "p4ss" not in scrub(f"POST {url.replace('json', 'http')}", url)


# --- delivery ---------------------------------------------------------------------------------


def test_a_failure_reaches_a_real_smtp_server_and_http_receiver_once_per_incident(
    db: None, mailbox: Mailbox, receiver: Receiver
) -> None:
    # given an automation notifying two channels after 2 consecutive failed runs
    automation_id = make_automation(name="Nightly report")
    notify_on(
        automation_id,
        [make_channel("mail", mail_url(mailbox)), make_channel("hook", receiver_url(receiver))],
        2,
    )
    # when one run fails, is retried and fails twice more, then another run fails
    start = later()
    first = runs(automation_id, ExecutionStatus.FAILED, start=start)[0]
    evaluate()
    fail_again(first, start + timedelta(seconds=2))
    fail_again(first, start + timedelta(seconds=3))
    evaluate()
    assert not mailbox.messages and not receiver.posts  # one failed run so far, however retried
    runs(automation_id, ExecutionStatus.FAILED, start=start + timedelta(seconds=4))
    evaluate()
    # and more runs fail while the incident is open
    runs(automation_id, "failed", "failed", start=start + timedelta(seconds=10))
    evaluate()
    evaluate()
    # then each channel got exactly one failure notice, with the run's error
    assert len(mailbox.messages) == 1 and len(receiver.posts) == 1
    assert "Subject: Stepwise: Nightly report is failing" in mailbox.messages[0]
    assert mailbox.logins == [("alerts", SMTP_PASSWORD)]
    path, authorization, body = receiver.posts[0]
    assert path == f"/hooks/{HOOK_PATH_SECRET}" and authorization
    assert body["title"] == "Stepwise: Nightly report is failing"
    assert body["type"] == "failure"  # apprise's type: red in Slack, Teams, Discord
    assert "2 consecutive runs failed" in body["message"]
    assert "agent answered 500" in body["message"]
    assert sorted((d.channel_name, d.kind, d.status) for d in deliveries()) == [
        ("hook", "failure", "ok"),
        ("mail", "failure", "ok"),
    ]


def test_a_success_after_the_incident_sends_one_recovery_notice(
    db: None, receiver: Receiver
) -> None:
    automation_id = make_automation(name="Sync")
    notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
    start = later()
    runs(automation_id, "failed", start=start)
    evaluate()
    # when a run succeeds, then another
    runs(automation_id, "succeeded", "succeeded", start=start + timedelta(seconds=5))
    evaluate()
    # then one recovery notice follows the failure notice, and the incident is closed
    assert [(p[2]["title"], p[2]["type"]) for p in receiver.posts] == [
        ("Stepwise: Sync is failing", "failure"),
        ("Stepwise: Sync recovered", "success"),
    ]
    with session_scope() as session:
        failure = session.scalars(select(Notice).where(Notice.kind == NoticeKind.FAILURE)).one()
        assert failure.closed_at is not None
    # and a new failure after the recovery is a new incident
    runs(automation_id, "failed", start=start + timedelta(seconds=10))
    evaluate()
    assert [p[2]["title"] for p in receiver.posts][-1] == "Stepwise: Sync is failing"
    assert len(receiver.posts) == 3


def test_runs_finished_before_the_rule_or_too_recently_do_not_count(
    db: None, receiver: Receiver
) -> None:
    automation_id = make_automation()
    runs(automation_id, "failed", start=later(-60))  # finished before the rule existed
    notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
    evaluate()
    assert not receiver.posts
    # a run that finished a moment ago waits for the settle time (it may commit late)
    just_now = later()
    runs(automation_id, "failed", start=just_now)
    assert evaluate(at=just_now + timedelta(seconds=2)) == 0
    assert evaluate(at=just_now + timedelta(seconds=10)) == 1
    assert len(receiver.posts) == 1


def test_a_parked_and_a_completed_schedule_are_each_notified_once(
    db: None, receiver: Receiver
) -> None:
    automation_id = make_automation(name="Backup")
    notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
    parked = make_schedule(automation_id)
    done = make_schedule(automation_id)
    # when dispatch parks one (its zone is gone) and the other reaches its end
    from tasks.periodic import dispatch_due

    with session_scope() as session:
        now = db_now(session)
        session.execute(
            update(Schedule)
            .where(Schedule.id == parked)
            .values(timezone="Gone/Away", next_run_at=now - timedelta(seconds=1))
        )
        session.execute(
            update(Schedule)
            .where(Schedule.id == done)
            .values(end_at=now + timedelta(seconds=30), next_run_at=now + timedelta(hours=1))
        )
    dispatch_due(lambda message: None, now=now + timedelta(hours=2))
    evaluate()
    evaluate()
    # then one notice each, saying why
    titles = sorted(p[2]["title"] for p in receiver.posts)
    assert titles == [
        "Stepwise: a schedule of Backup completed",
        "Stepwise: a schedule of Backup was parked",
    ]
    said = {p[2]["title"].rpartition(" ")[2]: p[2]["message"] for p in receiver.posts}
    assert said["parked"].startswith(f"Schedule {parked} stopped: disabled:")
    assert "Gone/Away" in said["parked"]
    assert said["completed"] == f"Schedule {done} stopped: reached its end"


def test_a_failing_channel_records_its_error_and_the_others_still_deliver(
    db: None, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # given one channel answering 500, one that nothing listens on, and a working one
    with http_receiver() as broken:
        broken.status = 500
        broken_id = make_channel(
            "broken", f"json://u:{HOOK_PASSWORD}@127.0.0.1:{broken.port}/x/{HOOK_PATH_SECRET}"
        )
        dead_id = make_channel("dead", f"json://u:{HOOK_PASSWORD}@127.0.0.1:9/x/{HOOK_PATH_SECRET}")
        good_id = make_channel("good", receiver_url(receiver))
        automation_id = make_automation()
        notify_on(automation_id, [broken_id, dead_id, good_id])
        runs(automation_id, "failed")
        counted = {o: metric("stepwise_notification_deliveries_total", outcome=o) for o in OUTCOMES}
        # when the evaluator runs (logging everything)
        with caplog.at_level(logging.DEBUG):
            evaluate()
    # then the working channel got it, the others record their errors, nothing was raised
    assert len(receiver.posts) == 1
    assert {
        o: metric("stepwise_notification_deliveries_total", outcome=o) - counted[o]
        for o in OUTCOMES
    } == {"sent": 1, "failed": 2}
    outcome = {d.channel_name: (d.status, d.error or "") for d in deliveries()}
    assert outcome["good"] == (DeliveryStatus.OK, "")
    assert outcome["broken"][0] == DeliveryStatus.ERROR and "500" in outcome["broken"][1]
    assert outcome["dead"][0] == DeliveryStatus.ERROR and outcome["dead"][1]
    # and no error or log line holds a credential of the URLs
    logged = " ".join(r.getMessage() for r in caplog.records)
    for secret in (HOOK_PASSWORD, HOOK_PATH_SECRET):
        assert secret not in logged
        assert all(secret not in (d.error or "") for d in deliveries())


@pytest.mark.parametrize(
    "url",
    [
        "json://10.1.2.3:8080/hook",
        "forms://u:p@[::ffff:192.168.1.1]/x",
        "json://metadata.google.internal/x",
        "mailto://u:p@example.com?smtp=10.0.0.25&to=a@example.com&from=s@example.com",
    ],
)
def test_a_channel_to_an_internal_address_is_refused_when_added(db: None, url: str) -> None:
    # the tests allow 127.0.0.1 only, as STEPWISE_AGENT_ALLOW does for an operator
    before = row_counts()
    refusal = pytest.raises(ValidationFailed, match="Apprise URL is not allowed")
    with refusal as refused:
        channel_service.add_channel("internal", url, actor=ADMIN)
    assert "STEPWISE_AGENT_ALLOW" in str(refused.value) and ":p@" not in str(refused.value)
    assert row_counts() == before


def test_a_channel_the_policy_no_longer_allows_is_refused_when_sending(
    db: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a loopback channel added while the policy allowed loopback
    automation_id = make_automation()
    notify_on(automation_id, [make_channel("local", receiver_url(receiver))])
    runs(automation_id, "failed")
    # when the operator removes loopback from the allowlist, then the notice is not sent
    monkeypatch.setenv("STEPWISE_AGENT_ALLOW", "")
    get_settings.cache_clear()
    try:
        evaluate()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    [delivery] = deliveries()
    assert delivery.status == DeliveryStatus.ERROR and not receiver.posts
    assert "refused" in (delivery.error or "") and "internal address" in (delivery.error or "")


def test_a_plain_http_channel_is_pinned_to_the_checked_address(receiver: Receiver) -> None:
    # given an HTTP channel named by host name (allowed: the tests allow 127.0.0.1)
    policy = get_settings().egress_policy()
    plugin = notify.apprise_plugin(f"json://localhost:{receiver.port}/x")
    # when the guard checks it, then the plugin connects to the checked address, by name
    assert notify.guard(plugin, "json", policy) is None
    assert plugin.host == "127.0.0.1"
    assert plugin.headers["Host"] == f"localhost:{receiver.port}"
    # and a delivery through it arrives with the name in its Host header
    target = channels.ChannelTarget(uuid.uuid4(), "hook", f"json://localhost:{receiver.port}/x")
    assert notify.deliver(target, Message("t", "b")).ok
    assert receiver.hosts == [f"localhost:{receiver.port}"]


def test_mail_and_tls_channels_need_every_address_allowed() -> None:
    policy = get_settings().egress_policy()  # allows 127.0.0.1 only
    secure = notify.apprise_plugin("jsons://10.0.0.5/x")
    assert "internal address" in (notify.guard(secure, "jsons", policy) or "")
    assert secure.host == "10.0.0.5"  # never pinned: TLS checks the name
    refused = notify.apprise_plugin("mailtos://u:p@10.0.0.5?to=a@example.com&from=s@example.com")
    assert "internal address" in (notify.guard(refused, "mailtos", policy) or "")
    assert notify.guard(notify.apprise_plugin("slack://TA/TB/TC"), "slack", policy) is None


def fetching_urls(receiver: Receiver, file: Path) -> list[str]:
    """Channel URLs whose options would make apprise fetch the internal receiver or read
    `file` itself (a template, a key file), and options that weaken or store."""
    internal = f"http://127.0.0.1:{receiver.port}/anything"
    return [
        f"discord://123456789012345678/AbCdEfGhIj?template={internal}",
        f"discord://123456789012345678/AbCdEfGhIj?TeMpLaTe={file}",
        f"discord://123456789012345678/AbCdEfGhIj?%74emplate={file}",
        f"discord://123456789012345678/AbCdEfGhIj?avatar_url={internal}",
        f"slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7?template={file}",
        f"tgram://123456789:abcdefg_hijklmnop/12345?template={internal}",
        f"mailto://u:p@127.0.0.1:9?to=a@example.com&from=s@example.com&pgppub={file}",
        f"json://127.0.0.1:{receiver.port}/x?verify=no",
        f"json://127.0.0.1:{receiver.port}/x?method=POST;store=yes",
    ]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A JSON file whose reading shows in its access time (set far behind its mtime)."""
    path = tmp_path / "key.json"
    path.write_text('{"content": "private key"}')
    os.utime(path, (0, time.time()))
    return path


def test_no_channel_option_makes_apprise_fetch_or_read_at_saving_or_sending(
    db: None, receiver: Receiver, key_file: Path
) -> None:
    before = row_counts()
    for url in fetching_urls(receiver, key_file):
        # when an admin adds a channel whose options would fetch or read, it is refused
        with pytest.raises(
            ValidationFailed, match="Apprise URL uses an option not allowed"
        ) as refused:
            channel_service.add_channel("x", url, actor=ADMIN)
        assert "127.0.0.1:" not in str(refused.value) and str(key_file) not in str(refused.value)
        # and one stored before this rule (written below the service) is refused at sending
        with session_scope() as session:
            stored = channels.add_channel(session, ChannelInput("old", url), actor=ADMIN)
            target = channels.open_channel(session, ADMIN.workspace_id, stored.id)
            session.rollback()
        assert target is not None
        outcome = notify.deliver(target, Message("t", "b"))
        assert not outcome.ok and "refused: uses an option not allowed" in (outcome.error or "")
    # then nothing reached the internal receiver, the file was never read, nothing written
    assert receiver.gets == [] and receiver.posts == []
    assert key_file.stat().st_atime == 0
    assert row_counts() == before


def test_every_offered_scheme_is_one_apprise_reads_with_its_allowed_options() -> None:
    # msteams:// was offered once, but apprise no longer reads it
    plugins = NotificationManager()
    for scheme in SCHEMES:
        assert scheme in plugins, scheme
        # and each allowed option is one apprise knows for that scheme (else it is noise)
        plugin = plugins[scheme]
        known = set(plugin.template_args) | set(plugin.template_tokens)
        assert OPTIONS[scheme] <= known, (scheme, OPTIONS[scheme] - known)
    assert notify.url_problem("msteams://a/b/c") is not None


def test_send_test_delivers_records_and_audits(db: None, receiver: Receiver) -> None:
    channel_id = make_channel("hook", receiver_url(receiver))
    outcome = channel_service.send_test(channel_id, actor=ADMIN)
    assert outcome.ok
    assert receiver.posts[0][2]["title"] == "Stepwise: test notification"
    [delivery] = deliveries()
    assert (delivery.kind, delivery.status) == (NoticeKind.TEST, DeliveryStatus.OK)
    with session_scope() as session:
        actions = [r.action for r in list_audit(session, AuditFilters(), actor=ADMIN)]
    assert actions[:2] == [AuditAction.TEST_CHANNEL, AuditAction.ADD_CHANNEL]


def test_a_claimed_delivery_is_never_sent_twice(db: None, receiver: Receiver) -> None:
    automation_id = make_automation()
    notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
    runs(automation_id, "failed")
    with session_scope() as session:
        notices.evaluate_executions(session, now=later(600), settle_s=5)
    # when one evaluator claims the delivery and dies before recording the outcome
    with session_scope() as session:
        [claimed] = notices.claim_deliveries(session, limit=10)
    # then another evaluator finds nothing to send, and later records the claim as interrupted
    assert notify.send_pending() == 0
    with session_scope() as session:
        assert notices.expire_stale_claims(session, now=later(600)) == 1
    [delivery] = deliveries()
    assert delivery.status == DeliveryStatus.ERROR and "interrupted" in (delivery.error or "")
    assert not receiver.posts and claimed.delivery_id == delivery.id


def test_a_claim_takes_no_more_than_asked(db: None, receiver: Receiver) -> None:
    automation_id = make_automation()
    notify_on(automation_id, [make_channel(name, receiver_url(receiver)) for name in "abc"])
    runs(automation_id, "failed")
    with session_scope() as session:
        assert notices.evaluate_executions(session, now=later(600), settle_s=5) == 1
    with session_scope() as session:
        assert len(notices.claim_deliveries(session, limit=1)) == 1
    with session_scope() as session:
        assert len(notices.claim_deliveries(session, limit=5)) == 2
    assert [d.status for d in deliveries()] == [DeliveryStatus.SENDING] * 3


def test_sending_stops_claiming_when_its_time_budget_is_spent(db: None, receiver: Receiver) -> None:
    # given a notice waiting for two channels
    automation_id = make_automation()
    notify_on(
        automation_id,
        [make_channel("a", receiver_url(receiver)), make_channel("b", receiver_url(receiver))],
    )
    runs(automation_id, "failed")
    with session_scope() as session:
        notices.evaluate_executions(session, now=later(600), settle_s=5)
    # when the tick has no time left for one more delivery (its limit would not fit)
    budget = get_settings().notify_timeout_s  # one second short of a delivery's limit
    assert notify.send_pending(budget_s=budget) == 0
    # then nothing was claimed: the deliveries wait, pending, for the next tick
    assert [d.status for d in deliveries()] == [DeliveryStatus.PENDING] * 2
    assert notify.send_pending() == 2 and len(receiver.posts) == 2


def test_names_and_agent_errors_go_out_as_text_not_markup(
    db: None, mailbox: Mailbox, receiver: Receiver
) -> None:
    # given an automation whose name and last error hold HTML and Slack/Markdown markup
    name = "Sync <b>now</b>"
    error = '<a href="https://evil.example">log in</a> <!channel> <https://evil.example|here> **x**'
    automation_id = make_automation(name=name)
    notify_on(
        automation_id,
        [
            make_channel("mail", mail_url(mailbox)),
            make_channel("html mail", mail_url(mailbox) + "&format=html"),
            make_channel("hook", receiver_url(receiver)),
        ],
    )
    start = later()
    add_executions(
        automation_id,
        [{"status": "failed", "queued_at": start, "finished_at": start, "error": error}],
    )
    evaluate()
    # then plain mail is text/plain only, and mail asked for as HTML holds the text escaped
    plain, rich = sorted(map(mail_parts, mailbox.messages), key=len)
    assert list(plain) == ["text/plain"] and error in plain["text/plain"]
    assert "<a" not in rich["text/html"] and "<b>" not in rich["text/html"]
    assert error in html.unescape(rich["text/html"]).replace("\xa0", " ")
    # and the HTTP channel carries the text as it was (JSON, no markup)
    assert receiver.posts[0][2]["title"] == f"Stepwise: {name} is failing"
    assert error in receiver.posts[0][2]["message"]
    # and Slack gets its control characters escaped, as text rather than mrkdwn
    slack = notify.apprise_plugin("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7")
    slack.webhook_url = f"http://127.0.0.1:{receiver.port}/services"  # the local receiver
    notify.post(slack, Message(f"Stepwise: {name} is failing", error))
    sent = receiver.posts[-1][2]
    assert sent["mrkdwn"] is False
    [attachment] = sent["attachments"]
    assert attachment["title"] == "Stepwise: Sync &lt;b&gt;now&lt;/b&gt; is failing"
    assert "&lt;!channel&gt;" in attachment["text"] and "<" not in attachment["text"]


# --- who may, and what is stored ------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.EDITOR])
def test_only_admins_add_delete_or_test_channels(db: None, role: Role) -> None:
    channel_id = make_channel("hook", "json://hooks.example.com/x")
    someone = person(f"{role}@example.com", role)
    before = row_counts()
    with pytest.raises(Forbidden):
        channel_service.add_channel("mine", "json://hooks.example.com/y", actor=someone)
    with pytest.raises(Forbidden):
        channel_service.delete_channel(channel_id, actor=someone)
    with pytest.raises(Forbidden):
        channel_service.send_test(channel_id, actor=someone)
    assert row_counts() == before


def test_bad_channels_and_other_workspaces_write_nothing(db: None) -> None:
    before = row_counts()
    for name, url in [("x", "json://"), ("x", "ftp://example.com"), ("", "json://a.example")]:
        with pytest.raises(ValidationFailed):
            channel_service.add_channel(name, url, actor=ADMIN)
    assert row_counts() == before
    # another workspace's channel can be neither chosen nor tested
    other = make_workspace()
    theirs = channel_service.add_channel("theirs", "json://a.example/x", actor=other).id
    automation_id = make_automation()
    with pytest.raises(ValidationFailed, match="channels"):
        channel_service.set_notifications(automation_id, [theirs], 1, actor=ADMIN)
    with pytest.raises(NotFound):
        channel_service.send_test(theirs, actor=ADMIN)


def test_the_channel_url_is_stored_sealed_never_in_clear(
    db: None, receiver: Receiver, mailbox: Mailbox
) -> None:
    # given channels with credentials, used for a notice and a test, and a bad one refused
    mail_id = make_channel("mail", mail_url(mailbox))
    hook_id = make_channel("hook", receiver_url(receiver))
    automation_id = make_automation()
    notify_on(automation_id, [mail_id, hook_id])
    runs(automation_id, "failed")
    evaluate()
    channel_service.send_test(hook_id, actor=ADMIN)
    assert len(receiver.posts) == 2 and len(mailbox.messages) == 1
    # when every table is read back, as rows and as the bytes PostgreSQL wrote to disk
    secrets = [SMTP_PASSWORD, HOOK_PASSWORD, HOOK_PATH_SECRET]
    with get_engine().connect() as conn:
        conn.execute(text("CHECKPOINT"))
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(text(f"SELECT t::text FROM {table.name} t")).scalars().all()
            stored = conn.execute(
                text("SELECT pg_read_binary_file(pg_relation_filepath(:t))"), {"t": table.name}
            ).scalar_one()
            if table.name == "notification_channels":  # the bytes read are the real rows
                assert b"json://127.0.0.1/" in bytes(stored)
            # then no secret is there in clear
            for secret in secrets:
                assert all(secret not in row for row in rows), (table.name, secret)
                assert secret.encode() not in bytes(stored), (table.name, secret)
    # and people see the redacted form only
    with session_scope() as session:
        shown = {c.name: c.redacted for c in channels.list_channels(session, actor=ADMIN)}
    assert shown == {"hook": "json://127.0.0.1/…", "mail": "mailto://127.0.0.1/…"}


def test_choosing_channels_is_for_editors_and_audited(db: None) -> None:
    channel_id = make_channel("hook", "json://hooks.example.com/x")
    automation_id = make_automation()
    editor = person("editor@example.com", Role.EDITOR)
    viewer = person("viewer@example.com", Role.VIEWER)
    with pytest.raises(Forbidden):
        channel_service.set_notifications(automation_id, [channel_id], 3, actor=viewer)
    channel_service.set_notifications(automation_id, [channel_id], 3, actor=editor)
    with session_scope() as session:
        chosen = channels.get_notifications(session, automation_id, actor=viewer)
        [row] = list_audit(
            session, AuditFilters(actions=(AuditAction.SET_NOTIFICATIONS,)), actor=viewer
        )
    assert chosen == channels.Notifications((channel_id,), 3)
    assert row.details["changed"]["failure_threshold"] == [1, 3]
    with pytest.raises(ValidationFailed, match="Failures before a notice"):
        channel_service.set_notifications(automation_id, [channel_id], 0, actor=editor)


def test_the_minute_tick_opens_sends_and_beats(
    db: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings
    from db.models import Heartbeat

    # given a failed run that finished after the rule, and no settle time
    monkeypatch.setenv("STEPWISE_NOTIFY_SETTLE_S", "0")
    get_settings.cache_clear()
    try:
        automation_id = make_automation()
        notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
        with session_scope() as session:
            finished = db_now(session) + timedelta(milliseconds=10)
        runs(automation_id, "failed", start=finished - timedelta(milliseconds=500))
        time.sleep(0.1)  # the run has finished by the database's clock
        # when the tick runs twice
        assert notify.tick_notify() == 1
        assert notify.tick_notify() == 0
    finally:
        get_settings.cache_clear()
    # then one notice went out and the tick recorded itself
    assert len(receiver.posts) == 1
    with session_scope() as session:
        beat = session.get(Heartbeat, "notify")
        assert beat is not None and beat.details["sent"] == 0


def test_a_channel_deleted_before_sending_records_why(db: None, receiver: Receiver) -> None:
    channel_id = make_channel("hook", receiver_url(receiver))
    automation_id = make_automation()
    notify_on(automation_id, [channel_id])
    runs(automation_id, "failed")
    with session_scope() as session:
        notices.evaluate_executions(session, now=later(600), settle_s=5)
    channel_service.delete_channel(channel_id, actor=ADMIN)
    notify.send_pending()
    [delivery] = deliveries()
    assert delivery.status == DeliveryStatus.ERROR and "deleted" in (delivery.error or "")
    assert not receiver.posts


def test_old_notices_are_purged_but_an_open_incident_stays(db: None, receiver: Receiver) -> None:
    automation_id = make_automation()
    other = make_automation(name="Other")
    notify_on(automation_id, [make_channel("hook", receiver_url(receiver))])
    notify_on(other, [make_channel("hook2", receiver_url(receiver))])
    start = later()
    runs(automation_id, "failed", "succeeded", start=start)  # a closed failure and a recovery
    runs(other, "failed", start=start)  # still failing
    evaluate()
    channel_service.send_test(make_channel("hook3", receiver_url(receiver)), actor=ADMIN)
    with session_scope() as session:
        purged = notices.purge(session, now=later(100 * 86400), older_than_days=90)
    assert purged == 2
    with session_scope() as session:
        [left] = session.scalars(select(Notice)).all()
        assert (left.automation_id, left.kind, left.closed_at) == (other, "failure", None)
    assert [d.channel_name for d in deliveries()] == ["hook2"]
