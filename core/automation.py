"""What an automation is made of, and the checks every input passes before a write."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import FieldError, ValidationFailed
from core.limits import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_STEP_TIMEOUT_S,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_RETRIES,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MAX_TEXT,
    MAX_URL,
    MIN_STEP_TIMEOUT_S,
)


@dataclass(frozen=True)
class Step:
    name: str
    message: str


@dataclass(frozen=True)
class AutomationInput:
    name: str
    agent_url: str
    steps: tuple[Step, ...]
    description: str = ""
    project_context: str = ""
    step_timeout_s: int = DEFAULT_STEP_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    owner_id: str = "local"
    headers_ref: str | None = None


def _check_url(url: str) -> str | None:
    if not url.strip():
        return "is required"
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https:// (got {parts.scheme or 'no scheme'!r})"
    if not parts.hostname:
        return "has no host name"
    return None


def _check_steps(steps: tuple[Step, ...]) -> list[FieldError]:
    if not steps:
        return [FieldError("steps", "add at least one step")]
    if len(steps) > MAX_STEPS:
        return [FieldError("steps", f"at most {MAX_STEPS} steps (got {len(steps)})")]
    errors = []
    for number, step in enumerate(steps, start=1):
        if not step.message.strip():
            errors.append(FieldError("steps", f"step {number} has no message"))
        elif len(step.message) > MAX_MESSAGE:
            errors.append(
                FieldError("steps", f"step {number}'s message is over {MAX_MESSAGE} characters")
            )
        if len(step.name) > MAX_NAME:
            errors.append(
                FieldError("steps", f"step {number}'s name is over {MAX_NAME} characters")
            )
    return errors


def validate_automation(data: AutomationInput) -> None:
    """Raise ValidationFailed listing every problem; return quietly when all is well."""
    errors: list[FieldError] = []
    if not data.name.strip():
        errors.append(FieldError("name", "is required"))
    elif len(data.name) > MAX_NAME:
        errors.append(FieldError("name", f"is longer than {MAX_NAME} characters"))
    for name, value in (
        ("description", data.description),
        ("project_context", data.project_context),
    ):
        if len(value) > MAX_TEXT:
            errors.append(FieldError(name, f"is longer than {MAX_TEXT} characters"))
    if (problem := _check_url(data.agent_url)) is not None:
        errors.append(FieldError("agent_url", problem))
    errors += _check_steps(data.steps)
    if not MIN_STEP_TIMEOUT_S <= data.step_timeout_s <= MAX_STEP_TIMEOUT_S:
        errors.append(
            FieldError(
                "step_timeout_s",
                f"must be between {MIN_STEP_TIMEOUT_S} and {MAX_STEP_TIMEOUT_S} seconds",
            )
        )
    if not 0 <= data.max_retries <= MAX_RETRIES:
        errors.append(FieldError("max_retries", f"must be between 0 and {MAX_RETRIES}"))
    if errors:
        raise ValidationFailed(errors)
