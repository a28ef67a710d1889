"""The one error hierarchy of Stepwise.

Validation errors carry the field they belong to and a sentence a person can act
on; the dashboard shows them next to the field, the API raises them before any
write. Errors that end a step or an execution are stored on its row as well.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepwiseError(Exception):
    """Base class of every error Stepwise raises on purpose."""


# The label each field has on the dashboard's forms, for messages people read; the API
# keeps the field's name beside it (`errors[].field`), for programs.
FIELD_LABELS = {
    "agent_url": "Agent URL",
    "url": "Apprise URL",
    "name": "Name",
    "description": "Description",
    "steps": "Steps",
    "project_context": "Project context",
    "request_headers": "Request headers",
    "step_timeout_s": "Step timeout",
    "max_retries": "Retries",
    "concurrency_limit": "Calls at once",
    "rate_limit_per_s": "Calls per second",
    "channels": "Channels",
    "failure_threshold": "Failures before a notice",
    "kind": "Kind",
    "preset": "Preset",
    "timing": "Timing",
    "cron_expr": "Cron expression",
    "interval_s": "Interval",
    "run_at": "Run at",
    "timezone": "Time zone",
    "start_at": "Start",
    "end_at": "End",
    "max_runs": "Maximum runs",
    "misfire_policy": "Missed runs",
    "catchup_window_s": "Catch-up window",
    "overlap_policy": "Overlap",
    "jitter_s": "Jitter",
    "input": "Input",
    "note": "Note",
    "from": "From",
    "to": "To",
    "member": "Member",
    "role": "Role",
    "who": "Who",
    "value": "Value",
    "body": "The request body",
    "format": "Format",
    "cursor": "Cursor",
}
# A message that starts with one of these reads on from the label: "Agent URL must ...".
_PREDICATES = (
    "is ",
    "must ",
    "has ",
    "was ",
    "cannot ",
    "can ",
    "does ",
    "needs ",
    "should ",
    "uses ",
)


def field_label(field: str) -> str:
    """The label people know a field by ("agent_url" -> "Agent URL")."""
    base = field.split(".", 1)[0].split("[", 1)[0]
    label = FIELD_LABELS.get(base) or base.replace("_", " ").capitalize() or "Input"
    return label if base == field else f"{label} ({field})"


@dataclass(frozen=True)
class FieldError:
    field: str  # the input's name, as the API and the forms know it
    message: str  # what is wrong, to follow the field's label

    @property
    def label(self) -> str:
        return field_label(self.field)

    def __str__(self) -> str:
        """A sentence that names the field by its label: "Agent URL must start with ..."."""
        message = self.message.strip()
        joined = (
            f"{self.label} {message}"
            if message.startswith(_PREDICATES)
            else (f"{self.label}: {message}")
        )
        return joined if joined.endswith((".", "?", "!")) else f"{joined}."


class ValidationFailed(StepwiseError):
    """One or more inputs were rejected; nothing was written."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__(" ".join(str(e) for e in self.errors))

    @classmethod
    def single(cls, field: str, message: str) -> ValidationFailed:
        return cls([FieldError(field, message)])

    def for_field(self, field: str) -> str | None:
        """The first message for ``field``, if any (for showing next to a form input)."""
        return next((e.message for e in self.errors if e.field == field), None)


class NotFound(StepwiseError):
    """The automation, schedule or execution does not exist (or was deleted)."""


class Forbidden(StepwiseError):
    """The acting person's role in the workspace does not allow the action; nothing was written."""


class QuotaExceeded(StepwiseError):
    """The workspace is at one of its limits (automations, schedules, runs per minute)."""


class InvalidState(StepwiseError):
    """The action does not apply to the object's current state (e.g. retry a success)."""


class ConfigError(StepwiseError):
    """Bad configuration; the message names the environment variable."""


class StepFailed(StepwiseError):
    """A step failed in a way worth retrying; Dramatiq's Retries schedules the next try."""


class AgentRejected(StepwiseError):
    """A step failed for good (4xx, bad URL); the message is dead-lettered at once."""


class ServerStartFailed(StepwiseError):
    """An embedded PostgreSQL or Redis could not start; the message says what to change."""


class NotAuthenticated(StepwiseError):
    """The caller proved nothing: no API token, or one unknown or revoked, or a webhook call
    without its webhook's secret or a valid signature; nothing was written."""

    def __init__(self, message: str, *, webhook: bool = False) -> None:
        super().__init__(message)
        self.webhook = webhook  # the proof missing: the webhook's, else an API token
