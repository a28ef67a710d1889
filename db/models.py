"""The database schema: SQLAlchemy 2 typed models.

All times are `timestamptz` in UTC. The slot key `(schedule_id, scheduled_for)`
is what makes "one execution per scheduled slot, ever" true no matter how many
schedulers run.

(Over 400 lines: every table in one module, so that the schema, its constraints'
naming convention and the migrations' reference read in one place.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.limits import (
    DEFAULT_CATCHUP_WINDOW_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STEP_TIMEOUT_S,
    MAX_CATCHUP_WINDOW_S,
    MAX_CONCURRENCY,
    MAX_CRON,
    MAX_DELIVERY_ID,
    MAX_FAILURE_THRESHOLD,
    MAX_JITTER_S,
    MAX_NAME,
    MAX_OWNER,
    MAX_PAUSE_NOTE,
    MAX_RATE_PER_S,
    MAX_REASON,
    MAX_RETRIES,
    MAX_SECRET_NAME,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MAX_TIMEZONE,
    MAX_URL,
    MAX_WORD,
    MIN_INTERVAL_S,
    MIN_RATE_PER_S,
    MIN_STEP_TIMEOUT_S,
)
from core.vocabulary import (
    OPEN_STATUSES,
    AuditAction,
    AuditTarget,
    CompletedReason,
    DeliveryStatus,
    ExecutionStatus,
    MisfirePolicy,
    NoticeKind,
    OverlapPolicy,
    Role,
    ScheduleKind,
    StepStatus,
    Trigger,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# A column holding a value sealed with STEPWISE_SECRET_KEYS (core.secrets): `stepwise
# reseal` re-seals every column so marked (db/keys.py), and only those.
SEALED = {"sealed": True}


def _in(column: str, values: Iterable[str]) -> str:
    """A CHECK (or partial index predicate) admitting exactly these words."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


def _between(column: str, low: float, high: float) -> str:
    return f"{column} BETWEEN {low} AND {high}"


# Percent of each page filled by inserts (migration 0021).
EXECUTIONS_FILLFACTOR = 80
STEP_RUNS_FILLFACTOR = 90


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSONB}


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def _workspace(*, index: bool = False) -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("workspaces.id"), index=index)


class Workspace(Base):
    """Where automations, schedules, runs, secrets and the audit live; people are members."""

    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    # Quotas; NULL means the deployment's default (core.limits).
    max_automations: Mapped[int | None] = mapped_column(Integer)
    max_schedules: Mapped[int | None] = mapped_column(Integer)
    max_runs_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        CheckConstraint(
            "max_automations >= 0 AND max_schedules >= 0 AND max_runs_per_minute >= 0",
            name="quotas",
        ),
    )


class Membership(Base):
    """A person (lower-case e-mail, or the local admin) with a role in a workspace.

    With login, the row is bound at the person's first login to the provider's identity
    (issuer, subject) whose verified e-mail matched it: from then on only that identity
    acts as this member.
    """

    __tablename__ = "memberships"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(String(MAX_OWNER), primary_key=True)
    role: Mapped[str] = mapped_column(String(MAX_WORD))
    created_at: Mapped[datetime] = _created()
    login_issuer: Mapped[str | None] = mapped_column(String(MAX_URL))
    login_subject: Mapped[str | None] = mapped_column(String(MAX_URL))

    __table_args__ = (
        CheckConstraint(_in("role", Role), name="role"),
        CheckConstraint("(login_issuer IS NULL) = (login_subject IS NULL)", name="login_identity"),
        # A person's workspaces, at every page load.
        Index("ix_memberships_subject", "subject"),
        # Who a login is, at every page load.
        Index("ix_memberships_login", "login_issuer", "login_subject"),
    )


class WorkspaceSecret(Base):
    """A named value for agent request headers, sealed (core.secrets); never stored in clear."""

    __tablename__ = "workspace_secrets"

    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(MAX_SECRET_NAME), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text, info=SEALED)
    # The agent origins (`scheme://host:port`) an admin allows it to be sent to.
    origins: Mapped[list[str]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class ApiToken(Base):
    """A token for the REST API, acting in one workspace with one role.

    Only the SHA-256 of the token is stored (core.tokens): it is shown once, at
    creation. A revoked token stays, so the audit and "last used" keep their meaning.
    """

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = _uuid_pk()
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    role: Mapped[str] = mapped_column(String(MAX_WORD))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(MAX_OWNER))
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: until revoked

    __table_args__ = (CheckConstraint(_in("role", Role), name="role"),)


class IdempotencyKey(Base):
    """An API create made with an `Idempotency-Key`: a repeat answers with the same object.

    Written in the create's own transaction, so a key exists exactly when its object was
    made; a concurrent repeat waits on the key's row and then finds the object.
    """

    __tablename__ = "idempotency_keys"

    token_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(MAX_NAME), primary_key=True)
    # SHA-256 of the request (method, path, body): the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()


class Webhook(Base):
    """An automation's inbound webhook: a POST to /v1/hooks/<id> starts a run.

    The caller proves itself with the webhook's secret, sealed here (core.secrets) and
    shown once, at enabling or rotation. Disabling deletes the row: the URL is dead
    for good, and enabling again makes a new one.
    """

    __tablename__ = "hook_triggers"  # the table keeps its first name (a stored identifier)

    id: Mapped[uuid.UUID] = _uuid_pk()
    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE"), unique=True
    )
    workspace_id: Mapped[uuid.UUID] = _workspace()  # its automation's
    secret: Mapped[str] = mapped_column(Text, info=SEALED)
    created_by: Mapped[str] = mapped_column(String(MAX_OWNER))
    created_at: Mapped[datetime] = _created()
    rotated_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """A webhook call's `Stepwise-Delivery` id: the same id again answers with the same run.

    Deleted with its run (retention), or with its webhook.
    """

    __tablename__ = "hook_deliveries"  # the table and its columns keep their first names

    webhook_id: Mapped[uuid.UUID] = mapped_column(
        "trigger_id", ForeignKey("hook_triggers.id", ondelete="CASCADE"), primary_key=True
    )
    delivery_id: Mapped[str] = mapped_column(String(MAX_DELIVERY_ID), primary_key=True)
    # NULL only inside the transaction that claimed the id, until its run exists.
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = _created()


class Automation(Base):
    __tablename__ = "automations"

    id: Mapped[uuid.UUID] = _uuid_pk()
    workspace_id: Mapped[uuid.UUID] = _workspace(index=True)
    owner_id: Mapped[str] = mapped_column(String(MAX_OWNER), default="local")
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    description: Mapped[str] = mapped_column(Text, default="")
    steps: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    project_context: Mapped[str] = mapped_column(Text, default="")
    agent_url: Mapped[str] = mapped_column(String(MAX_URL))
    # Sent with every call: {name: value}, values may hold {{ secret.NAME }} references
    # to workspace secrets (filled in by the worker at call time, never stored).
    request_headers: Mapped[dict[str, str]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    # The key agent calls are signed with, sealed (core.secrets); never stored in clear.
    signing_secret: Mapped[str | None] = mapped_column(Text, info=SEALED)
    step_timeout_s: Mapped[int] = mapped_column(Integer, default=DEFAULT_STEP_TIMEOUT_S)
    max_retries: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_RETRIES)
    # Flow control over every worker (tasks/flow.py); NULL is no limit.
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    rate_limit_per_s: Mapped[float | None] = mapped_column(Double)
    # Its runs go to the urgent queue (tasks/broker.py), ahead of any backlog.
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
    archived_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_between("jsonb_array_length(steps)", 1, MAX_STEPS), name="steps_count"),
        CheckConstraint(
            _between("step_timeout_s", MIN_STEP_TIMEOUT_S, MAX_STEP_TIMEOUT_S), name="step_timeout"
        ),
        CheckConstraint(_between("max_retries", 0, MAX_RETRIES), name="max_retries"),
        CheckConstraint(
            _between("concurrency_limit", 1, MAX_CONCURRENCY), name="concurrency_limit"
        ),
        CheckConstraint(
            _between("rate_limit_per_s", MIN_RATE_PER_S, MAX_RATE_PER_S), name="rate_limit"
        ),
    )


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = _uuid_pk()
    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE"), index=True
    )
    workspace_id: Mapped[uuid.UUID] = _workspace(index=True)  # its automation's
    kind: Mapped[str] = mapped_column(String(MAX_WORD))
    cron_expr: Mapped[str | None] = mapped_column(String(MAX_CRON))
    interval_s: Mapped[int | None] = mapped_column(Integer)
    run_at: Mapped[datetime | None]
    timezone: Mapped[str] = mapped_column(String(MAX_TIMEZONE), default="UTC")
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    max_runs: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    misfire_policy: Mapped[str] = mapped_column(String(MAX_WORD), default=MisfirePolicy.RUN_ONCE)
    catchup_window_s: Mapped[int] = mapped_column(Integer, default=DEFAULT_CATCHUP_WINDOW_S)
    overlap_policy: Mapped[str] = mapped_column(String(MAX_WORD), default=OverlapPolicy.SKIP)
    jitter_s: Mapped[int] = mapped_column(Integer, default=0)
    # Given to every run of the schedule as its input (a JSON object; core.run_input).
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    next_run_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(MAX_WORD))
    # Runs handed to workers so far (max_runs counts these).
    dispatched_count: Mapped[int] = mapped_column(Integer, default=0)
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    missed_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    # Why it stopped for good (a CompletedReason); None while active or paused by a person.
    completed_reason: Mapped[str | None] = mapped_column(String(MAX_REASON))
    # Why dispatch could not plan it, when completed_reason is PARKED.
    parked_error: Mapped[str | None] = mapped_column(String(MAX_REASON))
    # Who paused it, when and why (the note as they wrote it); cleared on resume.
    paused_by: Mapped[str | None] = mapped_column(String(MAX_OWNER))
    paused_at: Mapped[datetime | None]
    pause_note: Mapped[str | None] = mapped_column(String(MAX_PAUSE_NOTE))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        CheckConstraint(_in("kind", ScheduleKind), name="kind"),
        CheckConstraint(_in("misfire_policy", MisfirePolicy), name="misfire"),
        CheckConstraint(_in("overlap_policy", OverlapPolicy), name="overlap"),
        CheckConstraint(
            f"interval_s IS NULL OR interval_s >= {MIN_INTERVAL_S}", name="interval_min"
        ),
        CheckConstraint("end_at IS NULL OR start_at IS NULL OR end_at > start_at", name="bounds"),
        CheckConstraint("max_runs IS NULL OR max_runs >= 1", name="max_runs"),
        CheckConstraint(_between("catchup_window_s", 0, MAX_CATCHUP_WINDOW_S), name="catchup"),
        CheckConstraint(_between("jitter_s", 0, MAX_JITTER_S), name="jitter"),
        CheckConstraint(
            f"last_status IS NULL OR {_in('last_status', ExecutionStatus)}", name="last_status"
        ),
        CheckConstraint(
            f"completed_reason IS NULL OR {_in('completed_reason', CompletedReason)}",
            name="completed_reason",
        ),
        CheckConstraint(
            f"parked_error IS NULL OR completed_reason = '{CompletedReason.PARKED}'",
            name="parked_error",
        ),
        # The dispatcher's only query: due, enabled schedules in next_run_at order.
        Index("ix_schedules_due", "next_run_at", postgresql_where=text("enabled")),
    )


class Execution(Base):
    __tablename__ = "executions"

    id: Mapped[uuid.UUID] = _uuid_pk()
    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE")
    )
    # Its automation's, copied: every history list and figure is scoped without a join.
    workspace_id: Mapped[uuid.UUID] = _workspace()
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL")
    )
    trigger: Mapped[str] = mapped_column(String(MAX_WORD), default=Trigger.SCHEDULE)
    scheduled_for: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(MAX_WORD), default=ExecutionStatus.QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    # What the run was started with (its schedule's, its caller's or a webhook's JSON
    # object), sent to the agent with every step as `input`.
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # When the message carrying this execution becomes due for a worker (the slot,
    # or the end of a retry's backoff). A queued row well past it lost its message
    # (Redis flushed, worker killed) and housekeeping sends a new one.
    available_at: Mapped[datetime | None]
    # A parked run's wake-up was sent (migration 0023): by its park when `available_at`
    # was within WAKE_HORIZON_S, else by housekeeping once it came within (NULL until
    # then: nothing in Redis for it). A park sets it again; a resolution's wake sets it.
    wake_sent_at: Mapped[datetime | None]
    # The run's trace (W3C trace id, 32 hex digits) when tracing is on (tasks/tracing.py).
    trace_id: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        # The slot key: one execution per slot, ever. A run of a schedule started by hand
        # (trigger manual) belongs to the schedule but takes no slot (migration 0015).
        Index(
            "uq_executions_slot",
            "schedule_id",
            "scheduled_for",
            unique=True,
            postgresql_where=text(f"trigger <> '{Trigger.MANUAL}'"),
        ),
        CheckConstraint(_in("status", ExecutionStatus), name="status"),
        CheckConstraint(_in("trigger", Trigger), name="trigger"),
        Index("ix_executions_recent", text("queued_at DESC")),
        Index("ix_executions_automation_recent", "automation_id", text("queued_at DESC")),
        Index("ix_executions_status_recent", "status", text("queued_at DESC")),
        Index("ix_executions_finished", "finished_at"),
        Index("ix_executions_workspace_recent", "workspace_id", text("queued_at DESC")),
        # Covering: the charts' windows are read without the table (migration 0013).
        Index(
            "ix_executions_workspace_finished_covering",
            "workspace_id",
            "finished_at",
            postgresql_include=["status", "schedule_id", "automation_id", "started_at"],
        ),
        # Small: only unfinished rows (overlap checks, recovery, cancellation).
        Index(
            "ix_executions_open",
            "schedule_id",
            "scheduled_for",
            postgresql_where=text(_in("status", OPEN_STATUSES)),
        ),
        Index(
            "ix_executions_open_by_time",
            "available_at",
            postgresql_where=text(_in("status", OPEN_STATUSES)),
        ),
        # Parked runs by wake-up time (migration 0023): the wake claim, housekeeping's
        # re-send of a lost wake-up, and the count of runs waiting, over waiting rows only.
        Index(
            "ix_executions_waiting",
            "available_at",
            postgresql_where=text(f"status = '{ExecutionStatus.WAITING}'"),
        ),
        # Room on each page for a row's next version (migration 0021): a step's start
        # (step, lease) changes no indexed column, so it is a HOT update, which touches
        # none of the table's indexes, only while the row's page has space for it.
        {"postgresql_with": {"fillfactor": EXECUTIONS_FILLFACTOR}},
    )


def _chain_key(context: Any) -> str:
    return f"step_{context.get_current_parameters()['step_number']}"


class StepRun(Base):
    __tablename__ = "step_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    step_number: Mapped[int] = mapped_column(Integer)
    # The step's key in its automation's graph (`core.graph`); a chain's: step_<number>.
    # Rows inserted through the model without one (tests, tools) get their chain step's key.
    step_key: Mapped[str] = mapped_column(Text, default=_chain_key)
    item: Mapped[int | None] = mapped_column(Integer)  # a fan-out's item (its index), else None
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(MAX_WORD))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # A step of kind async, approval or sleep (migration 0023): while `waiting`, the instant
    # its wait ends by its kind's rule (a sleep's end, a callback's or a decision's deadline),
    # computed once at the step's start; kept once resolved.
    wait_until: Mapped[datetime | None]
    # What it waits for: {"kind": "async"|"approval"|"sleep", ...} (docs/RELIABILITY.md,
    # "Waits"): an async step's progress and note, an approval's role, policies, rendered
    # message and, once made, its decision.
    wait: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint(_in("status", StepStatus), name="status"),
        Index("ix_step_runs_execution", "execution_id", "step_number", "attempt"),
        # The open waits of a run (its coordinator's reads, the park's check, cancel).
        Index(
            "ix_step_runs_waiting",
            "execution_id",
            postgresql_where=text(f"status = '{StepStatus.WAITING}'"),
        ),
        # A step's answer changes no indexed column: room for it as a HOT update (0021).
        {"postgresql_with": {"fillfactor": STEP_RUNS_FILLFACTOR}},
    )


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    workspace_id: Mapped[uuid.UUID] = _workspace()
    actor: Mapped[str] = mapped_column(String(MAX_OWNER))
    action: Mapped[str] = mapped_column(String(32))  # an AuditAction
    target_type: Mapped[str] = mapped_column(String(32))  # an AuditTarget
    target_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)

    __table_args__ = (
        CheckConstraint(_in("action", AuditAction), name="action"),
        CheckConstraint(_in("target_type", AuditTarget), name="target_type"),
        Index("ix_audit_log_target", "target_id", text("at DESC")),
        Index("ix_audit_log_workspace", "workspace_id", text("at DESC")),
    )


class Heartbeat(Base):
    """Last time each periodic job ran (the dashboard warns when the tick is stale)."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


# --- notifications (db/channels.py, db/notices.py) -----------------------------------


class NotificationChannel(Base):
    """Where a workspace's notices go: an apprise URL, sealed (it may hold credentials).

    `redacted` is what people see of it: the scheme and, where that is an address, the
    host; never a user, password, path or query.
    """

    __tablename__ = "notification_channels"

    id: Mapped[uuid.UUID] = _uuid_pk()
    workspace_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    sealed_url: Mapped[str] = mapped_column(Text, info=SEALED)
    redacted: Mapped[str] = mapped_column(String(MAX_URL))
    created_by: Mapped[str] = mapped_column(String(MAX_OWNER))
    created_at: Mapped[datetime] = _created()

    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_notification_channels"),)


class NotifyRule(Base):
    """An automation's notifications: after how many consecutive failed runs, and the
    evaluator's state (what it has read, the current failure streak)."""

    __tablename__ = "notify_rules"

    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[uuid.UUID] = _workspace(index=True)
    failure_threshold: Mapped[int] = mapped_column(Integer, default=1)
    # Runs finished up to here have been read (a run finished before the rule never counts).
    seen_until: Mapped[datetime] = mapped_column(server_default=func.now())
    failure_streak: Mapped[int] = mapped_column(Integer, default=0)
    # A failed run retried and failing again is one failed run, not two.
    last_failed_execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        CheckConstraint(
            _between("failure_threshold", 1, MAX_FAILURE_THRESHOLD), name="failure_threshold"
        ),
    )


class NotifyRuleChannel(Base):
    """A channel an automation's notices go to."""

    __tablename__ = "notify_rule_channels"

    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notify_rules.automation_id", ondelete="CASCADE"), primary_key=True
    )
    channel_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Notice(Base):
    """One incident worth telling people about; its deliveries are written with it.

    At most one open failure notice per automation (a partial unique index): a second
    evaluator, or a later failure while the incident is open, inserts nothing.
    A schedule notice is keyed by the schedule and the moment it stopped.
    """

    __tablename__ = "notices"

    id: Mapped[uuid.UUID] = _uuid_pk()
    workspace_id: Mapped[uuid.UUID] = _workspace()
    automation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("automations.id", ondelete="CASCADE"), index=True
    )
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL")
    )
    # The run that opened or closed it (no key: retention deletes old runs).
    execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(String(MAX_WORD))
    summary: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]  # a failure notice: when its automation recovered
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        CheckConstraint(_in("kind", NoticeKind), name="kind"),
        Index(
            "ix_notices_open_failure",
            "automation_id",
            unique=True,
            postgresql_where=text(f"kind = '{NoticeKind.FAILURE}' AND closed_at IS NULL"),
        ),
        Index(
            "ix_notices_schedule_stop",
            "schedule_id",
            "occurred_at",
            unique=True,
            postgresql_where=text("schedule_id IS NOT NULL"),
        ),
    )


class Delivery(Base):
    """One notice sent (or being sent) to one channel, with its outcome.

    Written `pending` with its notice; claimed `sending` by one conditional UPDATE
    before anything is sent, so no two evaluators send it; `ok` or `error` after.
    """

    __tablename__ = "notify_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workspace_id: Mapped[uuid.UUID] = _workspace()
    notice_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("notices.id", ondelete="CASCADE")
    )
    channel_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="SET NULL")
    )
    channel_name: Mapped[str] = mapped_column(String(MAX_NAME))
    automation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(String(MAX_WORD))
    status: Mapped[str] = mapped_column(String(MAX_WORD), default=DeliveryStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    claimed_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("notice_id", "channel_id", name="uq_notify_deliveries_notice"),
        CheckConstraint(_in("kind", NoticeKind), name="kind"),
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index("ix_notify_deliveries_workspace", "workspace_id", text("created_at DESC")),
        Index(
            "ix_notify_deliveries_unsent",
            "id",
            postgresql_where=text(_in("status", (DeliveryStatus.PENDING, DeliveryStatus.SENDING))),
        ),
    )
