"""The words of the domain: every status, kind and policy, one StrEnum each.

A member compares equal to its text (`ExecutionStatus.QUEUED == "queued"`), so rows
read from PostgreSQL and values typed in a form need no conversion; the database's
CHECK constraints are generated from these members (`db/models.py`), so a word
added here is a word the database accepts.
"""

from __future__ import annotations

from enum import StrEnum


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Parked: every open step of its graph waits (a sleep, an agent's callback, a person's
    # approval); no worker, lease or thread holds it until `available_at` or a resolution.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_open(self) -> bool:
        """Not finished yet: a worker may still pick it up, is running it, or it waits."""
        return self in OPEN_STATUSES


OPEN_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING)
# A run in progress for its schedule's overlap policy: started and not ended (a parked run
# is still in progress).
IN_PROGRESS_STATUSES = (ExecutionStatus.RUNNING, ExecutionStatus.WAITING)
FINAL_STATUSES = tuple(s for s in ExecutionStatus if s not in OPEN_STATUSES)
# What a run ended with, as charted: cancelled runs are a person's choice, not an outcome.
CHART_STATUSES = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # cut at the agent when a person cancelled its run, or never started
    SKIPPED = "skipped"  # a graph's step left out by its condition (no call; the reason in error)
    # A step of kind async (its agent answered 202), approval or sleep, until resolved or
    # past its `wait_until`; then succeeded, failed or skipped (only from waiting: single use).
    WAITING = "waiting"


class StepState(StrEnum):
    """Where one step of a run's graph stands (`core.graph`); each call it makes to the agent
    is a step run, with a StepStatus."""

    PENDING = "pending"  # not started: waiting for its needs, or never reached
    RUNNING = "running"
    WAITING = "waiting"  # started and waiting: a sleep, an agent's callback, an approval
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good: its retries are spent, or no retry could help
    SKIPPED = "skipped"  # its condition was false, or a step it needs was skipped
    CANCELLED = "cancelled"  # never started because the run failed, or cut by a person

    @property
    def is_final(self) -> bool:
        return self not in (StepState.PENDING, StepState.RUNNING, StepState.WAITING)


class StepKind(StrEnum):
    """What a step of a graph does."""

    CALL = "call"  # one call to the agent (one per item of a for_each)
    ASYNC = "async"  # a call whose agent may answer 202 and POST the result to a callback
    APPROVAL = "approval"  # no call: a person of a role approves or rejects
    SLEEP = "sleep"  # no call: waits a duration or until an instant

    @property
    def waits(self) -> bool:
        """Its step run may be stored `waiting` (with `wait_until` and `wait`)."""
        return self is not StepKind.CALL


class OnReject(StrEnum):
    """What a rejected approval step does."""

    FAIL = "fail"  # the step fails (its dependents follow the graph's rules)
    SKIP = "skip"  # the step is skipped


class OnTimeout(StrEnum):
    """What an approval step nobody decided within its timeout does (a decision by "timeout")."""

    REJECT = "reject"
    APPROVE = "approve"


class Trigger(StrEnum):
    """Why an execution exists."""

    SCHEDULE = "schedule"
    CATCHUP = "catchup"  # a missed slot run late by the misfire policy
    MANUAL = "manual"
    RETRY = "retry"
    WEBHOOK = "webhook"  # a call to the automation's webhook
    BACKFILL = "backfill"  # a past slot run on a person's request (`db.backfill`)


class ScheduleKind(StrEnum):
    CRON = "cron"
    INTERVAL = "interval"
    ONCE = "once"


class MisfirePolicy(StrEnum):
    """What to do with slots missed while nothing dispatched (e.g. downtime)."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"


class OverlapPolicy(StrEnum):
    """What to do with a slot that is due while the previous run still runs."""

    SKIP = "skip"
    BUFFER_ONE = "buffer_one"
    ALLOW = "allow"


class OverlapDecision(StrEnum):
    RUN = "run"
    SKIP = "skip"  # the previous run still runs
    WAIT = "wait"
    SUPERSEDED = "superseded"  # a later slot already started: this one would run out of order


class ScheduleState(StrEnum):
    """How a schedule reads in lists: enabled, paused by a person, or done for good."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


class CompletedReason(StrEnum):
    """Why a schedule stopped for good (`schedules.completed_reason`); each word reads as
    the dashboard and the API show it. A schedule paused by a person has none."""

    RAN_ONCE = "ran once"  # a one-time schedule's run was dispatched
    END_REACHED = "reached its end"  # no slot before end_at is left
    MAX_RUNS = "reached its maximum number of runs"
    NO_FURTHER_SLOT = "no further slot"  # the timing has no slot left, and no end_at
    RUN_TIME_PASSED = "its run time has passed"  # a one-time schedule armed after its time
    AUTOMATION_DELETED = "automation deleted"
    # Dispatch could not plan it (e.g. its zone is gone from tzdata); `parked_error` says why.
    PARKED = "disabled: cannot be planned"


class AuditAction(StrEnum):
    """What a person did, as the audit log records it."""

    CREATE = "create"
    EDIT = "edit"
    PAUSE = "pause"
    RESUME = "resume"
    DELETE = "delete"
    RUN_NOW = "run_now"
    RETRY = "retry"
    CANCEL = "cancel"
    ROTATE_SECRET = "rotate_secret"
    CREATE_WORKSPACE = "create_workspace"
    ADD_MEMBER = "add_member"
    SET_ROLE = "set_role"
    REMOVE_MEMBER = "remove_member"
    RETRY_DEAD_LETTER = "retry_dead_letter"
    PURGE_DEAD_LETTERS = "purge_dead_letters"
    SET_SECRET = "set_secret"
    DELETE_SECRET = "delete_secret"
    SET_QUOTA = "set_quota"
    CREATE_TOKEN = "create_token"
    REVOKE_TOKEN = "revoke_token"
    ADD_CHANNEL = "add_channel"
    DELETE_CHANNEL = "delete_channel"
    TEST_CHANNEL = "test_channel"
    SET_NOTIFICATIONS = "set_notifications"
    # An automation's webhook; the values keep their first word: they are stored in audit
    # rows, the CHECK constraint and `GET /v1/audit?action=`.
    ENABLE_WEBHOOK = "enable_hook"
    ROTATE_WEBHOOK = "rotate_hook"
    DISABLE_WEBHOOK = "disable_hook"
    BACKFILL = "backfill"
    APPROVE = "approve"  # a person approved an approval step (target: the execution)
    REJECT = "reject"  # a person rejected an approval step (target: the execution)


class AuditTarget(StrEnum):
    AUTOMATION = "automation"
    SCHEDULE = "schedule"
    EXECUTION = "execution"
    WORKSPACE = "workspace"  # its members and quotas
    QUEUE = "queue"  # a Redis queue's dead letters (the id is the acting workspace's)
    SECRET = "secret"
    TOKEN = "token"  # an API token (the audit names it, never its value)
    CHANNEL = "channel"  # a notification channel (the audit names it, never its URL)


class Role(StrEnum):
    """A member's role in a workspace, weakest first (see `core.access.can`)."""

    VIEWER = "viewer"  # reads everything in the workspace
    EDITOR = "editor"  # also creates, edits, deletes, runs, retries and cancels
    ADMIN = "admin"  # also manages members, secrets, quotas and the queues


class Permission(StrEnum):
    """What an action needs; `core.access.PERMISSIONS` says which role has which."""

    READ = "read"
    EDIT = "edit"  # automations and schedules: create, edit, pause, resume, delete
    RUN = "run"  # run now, retry, cancel
    MANAGE_MEMBERS = "manage_members"
    MANAGE_SECRETS = "manage_secrets"
    MANAGE_QUOTAS = "manage_quotas"
    MANAGE_QUEUES = "manage_queues"  # retry or purge dead letters
    MANAGE_TOKENS = "manage_tokens"  # create, list and revoke API tokens
    MANAGE_CHANNELS = "manage_channels"  # add, delete and test notification channels


def one_of(enum: type[StrEnum]) -> str:
    """ "a, b or c": the choices of `enum` for an error message."""
    values = [member.value for member in enum]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


class NoticeKind(StrEnum):
    """Why a notification is sent (a "notice": one per incident, to each chosen channel)."""

    FAILURE = "failure"  # N consecutive failed runs of an automation
    RECOVERY = "recovery"  # the first success after a failure notice
    PARKED = "parked"  # a schedule disabled by Stepwise because it cannot be planned
    COMPLETED = "completed"  # a schedule done for good (end, max runs, once), with its reason
    TEST = "test"  # an admin's "Send test"


class DeliveryStatus(StrEnum):
    """One notice to one channel: written pending, claimed as sending, then ok or error."""

    PENDING = "pending"
    SENDING = "sending"
    OK = "ok"
    ERROR = "error"


class FailureReport(StrEnum):
    """How a run that failed for good is reported to the queue (its dead letter)."""

    REJECTED = "rejected"  # the agent refused the step (4xx): no retry could help
    EXHAUSTED = "exhausted"  # a retryable failure with no retries left


class Admission(StrEnum):
    """What became of a run message a worker took: its run started, or why not.

    A claim answers with a `db.runs.Claim` or one of the last four; the worker's
    admission (`tasks/admission.py`) adds the first two.
    """

    STARTED = "started"  # claimed and handed to the runner
    HANDED_BACK = "handed back"  # sent to the queue again without spending a retry
    EARLY = "early"  # before its slot, and its start needs an overlap decision: claim it then
    NOTHING = "nothing"  # another worker has it, or it is final (a duplicate message)
    SKIPPED = "skipped"  # the overlap policy skipped it
    WAITING = "waiting"  # the overlap policy holds it until the previous run ends
