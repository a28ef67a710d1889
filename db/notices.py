"""The notification evaluator's database side: notices from finished runs and stopped
schedules, and their deliveries, claimed before sending and recorded after.

Nothing here runs on the run path: the evaluator reads what workers already wrote.
Each automation's rule keeps a watermark (`seen_until`) and its failure streak; a
pass reads the runs that finished after the watermark (and at least `settle` ago,
so a run committing a moment late is not passed over), in finishing order, and
moves the streak (core.notify.advance). Opening a notice writes its deliveries,
one per chosen channel, in the same transaction: a crash loses nothing. A
delivery is claimed (`pending` -> `sending`) by one conditional UPDATE before it
is sent, so two evaluators never send it twice; a claim left `sending` by a crash
is recorded as an error after `STALE_CLAIM`, never sent again (at most once).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.limits import MAX_NOTICE_TEXT
from core.notify import Message, Streak, advance, failure_summary, message_for, stop_notice
from core.schedule import stopped_text
from core.vocabulary import DeliveryStatus, ExecutionStatus, NoticeKind, Permission
from db.channels import ChannelTarget, open_channel
from db.models import (
    Automation,
    Delivery,
    Execution,
    Notice,
    NotificationChannel,
    NotifyRule,
    NotifyRuleChannel,
    Schedule,
)
from db.session import locked_batch
from db.workspaces import authorize

STALE_CLAIM = timedelta(minutes=5)
EXECUTIONS_PER_PASS = 1000  # per automation; the rest is read at the next pass
INTERRUPTED = "interrupted: the evaluator stopped while sending; not sent again"
_FINISHED = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)
_HAS_CHANNEL = exists().where(NotifyRuleChannel.automation_id == NotifyRule.automation_id)


# --- notices ---------------------------------------------------------------------------


def evaluate_executions(session: Session, *, now: datetime, settle_s: int) -> int:
    """Move every rule's streak over the runs finished since its watermark; returns the
    notices opened. Rules another evaluator holds are skipped (it does them)."""
    rules = session.scalars(
        select(NotifyRule)
        .join(Automation, Automation.id == NotifyRule.automation_id)
        .where(Automation.archived_at.is_(None), _HAS_CHANNEL)
        .order_by(NotifyRule.automation_id)
        .with_for_update(of=NotifyRule, skip_locked=True)
    ).all()
    upto = now - timedelta(seconds=settle_s)
    return sum(_evaluate_rule(session, rule, upto) for rule in rules)


def _evaluate_rule(session: Session, rule: NotifyRule, upto: datetime) -> int:
    executions = session.execute(
        select(Execution.id, Execution.status, Execution.finished_at, Execution.error)
        .where(
            # (workspace, finished_at) is indexed: a range scan, whatever the history's size.
            Execution.workspace_id == rule.workspace_id,
            Execution.automation_id == rule.automation_id,
            Execution.status.in_(_FINISHED),
            Execution.finished_at > rule.seen_until,
            Execution.finished_at <= upto,
        )
        .order_by(Execution.finished_at, Execution.id)
        .limit(EXECUTIONS_PER_PASS)
    ).all()
    if not executions:
        return 0
    last = str(rule.last_failed_execution_id) if rule.last_failed_execution_id else None
    streak = Streak(rule.failure_streak, last, _open_failure(session, rule) is not None)
    opened = 0
    for execution in executions:
        failed = execution.status == ExecutionStatus.FAILED
        change = advance(
            streak, execution_id=str(execution.id), failed=failed, threshold=rule.failure_threshold
        )
        if change.notice == NoticeKind.FAILURE:
            summary = failure_summary(change.streak.failures, execution.error)
            opened += _open(
                session, rule, NoticeKind.FAILURE, summary, execution.id, execution.finished_at
            )
        elif change.notice == NoticeKind.RECOVERY:
            opened += _recover(session, rule, execution.id, execution.finished_at)
        streak = change.streak
    rule.seen_until = executions[-1].finished_at
    rule.failure_streak = streak.failures
    rule.last_failed_execution_id = uuid.UUID(streak.last_failed) if streak.last_failed else None
    return opened


def _open_failure(session: Session, rule: NotifyRule) -> uuid.UUID | None:
    return session.scalar(
        select(Notice.id).where(
            Notice.automation_id == rule.automation_id,
            Notice.kind == NoticeKind.FAILURE,
            Notice.closed_at.is_(None),
        )
    )


def _open(
    session: Session,
    rule: NotifyRule,
    kind: NoticeKind,
    summary: str,
    execution_id: uuid.UUID | None,
    occurred_at: datetime,
    schedule_id: uuid.UUID | None = None,
) -> int:
    """Insert a notice and its deliveries; 0 if its unique key says it exists already."""
    stmt = insert(Notice).values(
        id=uuid.uuid4(),
        workspace_id=rule.workspace_id,
        automation_id=rule.automation_id,
        schedule_id=schedule_id,
        execution_id=execution_id,
        kind=kind,
        summary=summary[:MAX_NOTICE_TEXT],
        occurred_at=occurred_at,
    )
    if kind == NoticeKind.FAILURE:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["automation_id"],
            index_where=text(f"kind = '{NoticeKind.FAILURE}' AND closed_at IS NULL"),
        )
    elif schedule_id is not None:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["schedule_id", "occurred_at"],
            index_where=text("schedule_id IS NOT NULL"),
        )
    notice_id = session.scalar(stmt.returning(Notice.id))
    if notice_id is None:
        return 0
    _fan_out(session, notice_id, rule, kind)
    return 1


def _recover(
    session: Session, rule: NotifyRule, execution_id: uuid.UUID, occurred_at: datetime
) -> int:
    closed = session.scalar(
        update(Notice)
        .where(
            Notice.automation_id == rule.automation_id,
            Notice.kind == NoticeKind.FAILURE,
            Notice.closed_at.is_(None),
        )
        .values(closed_at=occurred_at)
        .returning(Notice.id)
    )
    if closed is None:
        return 0
    summary = "A run succeeded after the failures reported before."
    return _open(session, rule, NoticeKind.RECOVERY, summary, execution_id, occurred_at)


def _fan_out(session: Session, notice_id: uuid.UUID, rule: NotifyRule, kind: NoticeKind) -> None:
    """One pending delivery per channel the automation has chosen."""
    channels = session.execute(
        select(NotificationChannel.id, NotificationChannel.name)
        .join(NotifyRuleChannel, NotifyRuleChannel.channel_id == NotificationChannel.id)
        .where(NotifyRuleChannel.automation_id == rule.automation_id)
    ).all()
    for channel in channels:
        session.add(
            Delivery(
                workspace_id=rule.workspace_id,
                notice_id=notice_id,
                channel_id=channel.id,
                channel_name=channel.name,
                automation_id=rule.automation_id,
                kind=kind,
                status=DeliveryStatus.PENDING,
            )
        )


def purge(session: Session, *, now: datetime, older_than_days: int) -> int:
    """Delete notices and deliveries older than the history's retention; returns how many
    notices. An open failure notice stays: its recovery has not been sent."""
    cutoff = now - timedelta(days=older_than_days)
    session.execute(
        delete(Delivery).where(Delivery.notice_id.is_(None), Delivery.created_at < cutoff)
    )
    gone = session.execute(
        delete(Notice)
        .where(
            Notice.created_at < cutoff,
            ~and_(Notice.kind == NoticeKind.FAILURE, Notice.closed_at.is_(None)),
        )
        .returning(Notice.id)
    ).all()
    return len(gone)


def evaluate_schedules(session: Session, *, now: datetime, within_days: int) -> int:
    """A notice for every schedule of a notifying automation that stopped with a reason
    (parked by dispatch, or completed) since its rule exists; returns how many opened.

    Keyed by the schedule and the moment it stopped: a schedule resumed and stopped
    again is a new notice, the same stop is never two. Stops older than `within_days`
    (the retention, after which `purge` deletes their notices) are not looked at.
    """
    stopped = session.execute(
        select(
            NotifyRule,
            Schedule.id,
            Schedule.completed_reason,
            Schedule.parked_error,
            Schedule.updated_at,
        )
        .join(Schedule, Schedule.automation_id == NotifyRule.automation_id)
        .join(Automation, Automation.id == NotifyRule.automation_id)
        .where(
            ~Schedule.enabled,
            Schedule.completed_reason.is_not(None),
            Schedule.updated_at > NotifyRule.created_at,
            Schedule.updated_at > now - timedelta(days=within_days),
            Automation.archived_at.is_(None),
            _HAS_CHANNEL,
            ~exists().where(
                and_(Notice.schedule_id == Schedule.id, Notice.occurred_at == Schedule.updated_at)
            ),
        )
    ).all()
    opened = 0
    for rule, schedule_id, reason, parked_error, stopped_at in stopped:
        reason = reason or ""  # never None: the query asks for a reason
        summary = f"Schedule {schedule_id} stopped: {stopped_text(reason, parked_error)}"
        kind = stop_notice(reason)
        opened += _open(session, rule, kind, summary, None, stopped_at, schedule_id)
    return opened


# --- deliveries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery: where it goes (None: the channel was deleted) and what it says."""

    delivery_id: int
    target: ChannelTarget | None
    message: Message


def claim_deliveries(session: Session, *, limit: int) -> list[Outgoing]:
    """Claim up to `limit` pending deliveries (`pending` -> `sending`), oldest first.

    Commit before sending: the claim is what keeps a second evaluator from sending.
    """
    pending = locked_batch(
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.PENDING)
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True),
        "pending",
    )
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id == pending.c.id, Delivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SENDING, claimed_at=func.now())
        .returning(Delivery.id, Delivery.workspace_id, Delivery.channel_id, Delivery.notice_id)
    ).all()
    return [_outgoing(session, row) for row in sorted(claimed, key=lambda r: r.id)]


def _outgoing(session: Session, row: Any) -> Outgoing:
    notice = session.execute(
        select(Notice.kind, Notice.summary, Automation.name)
        .join(Automation, Automation.id == Notice.automation_id)
        .where(Notice.id == row.notice_id)
    ).one()
    target = None
    if row.channel_id is not None:
        target = open_channel(session, row.workspace_id, row.channel_id)
    return Outgoing(
        row.id, target, message_for(NoticeKind(notice.kind), notice.name, notice.summary)
    )


def record_outcome(session: Session, delivery_id: int, error: str | None) -> None:
    """A claimed delivery's outcome: ok, or the (already scrubbed) error."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.SENDING)
        .values(
            status=DeliveryStatus.ERROR if error else DeliveryStatus.OK,
            error=error[:MAX_NOTICE_TEXT] if error else None,
            finished_at=func.now(),
        )
    )


def expire_stale_claims(session: Session, *, now: datetime) -> int:
    """Record claims left `sending` by a crashed evaluator as errors (never re-sent)."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < now - STALE_CLAIM)
        .values(status=DeliveryStatus.ERROR, error=INTERRUPTED, finished_at=func.now())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def start_test(session: Session, target: ChannelTarget, *, actor: Actor) -> Outgoing:
    """An admin's "Send test" to a channel of their workspace, as a claimed delivery (the
    caller sends it after commit and records its outcome, as for every delivery)."""
    delivery = Delivery(
        workspace_id=actor.workspace_id,
        channel_id=target.id,
        channel_name=target.name,
        kind=NoticeKind.TEST,
        status=DeliveryStatus.SENDING,
        claimed_at=func.now(),
    )
    session.add(delivery)
    session.flush()
    body = f"{actor.name} sent this from the Workspace page to check the channel."
    return Outgoing(delivery.id, target, message_for(NoticeKind.TEST, "", body))


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRow:
    created_at: datetime
    channel_name: str
    automation: str | None
    kind: str
    status: str
    error: str | None
    finished_at: datetime | None


def list_deliveries(session: Session, *, actor: Actor, limit: int = 100) -> list[DeliveryRow]:
    """The workspace's newest deliveries with their outcomes (any member may read them)."""
    authorize(session, actor, Permission.READ)
    rows = session.execute(
        select(
            Delivery.created_at,
            Delivery.channel_name,
            Automation.name.label("automation"),
            Delivery.kind,
            Delivery.status,
            Delivery.error,
            Delivery.finished_at,
        )
        .outerjoin(Automation, Automation.id == Delivery.automation_id)
        .where(Delivery.workspace_id == actor.workspace_id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    ).all()
    return [DeliveryRow(**row._mapping) for row in rows]
