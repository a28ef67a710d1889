"""The one error hierarchy of Stepwise.

Validation errors carry the field they belong to and a sentence a person can act
on; the dashboard shows them next to the field, the API raises them before any
write. Errors that end a step or an execution are stored on its row as well.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepwiseError(Exception):
    """Base class of every error Stepwise raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationFailed(StepwiseError):
    """One or more inputs were rejected; nothing was written."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

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
