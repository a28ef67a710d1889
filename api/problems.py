"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the API answers with is one shape: `type`, `title`, `status`, `detail`,
and for rejected input `errors`, the same `{field, message}` list that
`core.errors.ValidationFailed` gives the dashboard's forms. Another workspace's
id reads as 404, a role that may not act as 403, a missing or revoked token as
401; nothing is written in any of these cases.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from core.errors import (
    ConfigError,
    FieldError,
    Forbidden,
    InvalidState,
    NotAuthenticated,
    NotFound,
    QuotaExceeded,
    StepwiseError,
    ValidationFailed,
)
from core.waits import CallbackUnreadable, TokenRefused, WaitGone, WaitNotReady

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    field: str  # the input's name, for programs
    label: str  # how the dashboard's form labels it, for people
    message: str  # what is wrong, to follow the label (`detail` has the whole sentences)


class Problem(BaseModel):
    """RFC 9457 problem details; `errors` lists each rejected field."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


class BodyRefused(ValidationFailed):
    """A webhook's body that is not a JSON object (or a bad delivery id); nothing was written."""


class BodyTooLarge(StepwiseError):
    """A request body over its size limit, refused before it was read whole."""


class RateLimited(StepwiseError):
    """The token or webhook had its calls for this minute; `retry_after` seconds until the next."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# (status, slug, title) for each error of ours; a subclass comes before its base.
_KINDS: list[tuple[type[Exception], int, str, str]] = [
    (BodyRefused, 400, "invalid-body", "The body was refused"),
    (CallbackUnreadable, 400, "invalid-body", "The body was refused"),
    (ValidationFailed, 422, "invalid-input", "The input was refused"),
    (NotAuthenticated, 401, "unauthenticated", "An API token is required"),
    (BodyTooLarge, 413, "too-large", "The body is too large"),
    (Forbidden, 403, "forbidden", "Your role does not allow this"),
    (NotFound, 404, "not-found", "Not found"),
    (InvalidState, 409, "invalid-state", "Not possible in the current state"),
    (WaitGone, 410, "wait-ended", "Too late: the wait has ended"),
    (QuotaExceeded, 409, "quota-exceeded", "A workspace quota is reached"),
    (RateLimited, 429, "rate-limited", "Too many calls this minute"),
    (ConfigError, 503, "misconfigured", "The server is not configured for this"),
    (WaitNotReady, 503, "not-ready", "Not ready for this yet: send it again shortly"),
]


# A webhook call lacks the webhook's proof, not a token: its own title and, as RFC 9110
# asks of a 401, its own challenge.
_WEBHOOK_TITLE = "The webhook call is not authenticated"
_CHALLENGES = {
    False: {"WWW-Authenticate": "Bearer"},
    True: {"WWW-Authenticate": 'Stepwise-Signature realm="webhook"'},
}
# An async step's callback proves itself by the signed token in its URL.
_CALLBACK_TITLE = "The callback URL is not valid"
_CALLBACK_CHALLENGE = {"WWW-Authenticate": 'Stepwise-Callback realm="callback"'}


# The headers that come with these statuses, as the OpenAPI schema documents them.
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "how to authenticate: `Bearer` (an API token), the webhook's proof, "
            "or (a callback) its signed URL",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "seconds until this token may call again",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    503: {
        "Retry-After": {
            "description": "seconds until the call may be sent again (when it may)",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:stepwise:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [
            {"field": e.field, "label": e.label, "message": e.message} for e in errors
        ]
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry of a route for these error statuses (for the OpenAPI schema)."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["properties"]["errors"] = {
        "anyOf": [
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "label": {"type": "string"},
                        "message": {"type": "string"},
                    },
                    "required": ["field", "label", "message"],
                },
            },
            {"type": "null"},
        ]
    }
    titles = {status: title for _, status, _, title in _KINDS}
    titles[400] = "The body is not JSON"
    titles[503] = "Not now: not ready yet (send again after Retry-After), or not configured"
    titles[401] = (
        "Not authenticated: an API token (or, for a webhook, its proof; for a callback, a "
        "valid signed URL) is required"
    )
    return {
        status: {
            "description": titles.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": schema}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }


def answer(exc: StepwiseError) -> JSONResponse:
    """The problem response for one of our errors, outside a route (`api.gate`)."""
    return _from_stepwise(None, exc)


def _from_stepwise(_: Request | None, exc: Exception) -> JSONResponse:
    for kind, status, slug, title in _KINDS:
        if isinstance(exc, kind):
            errors = exc.errors if isinstance(exc, ValidationFailed) else None
            headers = None
            if isinstance(exc, TokenRefused):
                headers, title = _CALLBACK_CHALLENGE, _CALLBACK_TITLE
            elif isinstance(exc, NotAuthenticated):
                headers = _CHALLENGES[exc.webhook]
                title = _WEBHOOK_TITLE if exc.webhook else title
            if isinstance(exc, RateLimited | WaitNotReady):
                headers = {"Retry-After": str(exc.retry_after)}
            detail = str(exc)
            if isinstance(exc, ConfigError):
                detail = "the server is missing configuration"
                log.error("configuration: %s", exc)
            return problem(status, slug, title, detail, errors, headers)
    return _unexpected(_, exc)


def _from_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_field_error(e) for e in exc.errors()]
    detail = "; ".join(str(e) for e in errors)
    return problem(422, "invalid-input", "The input was refused", detail, errors)


def _field_error(error: Any) -> FieldError:
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    message = str(error.get("msg", "is not valid"))
    message = message.removeprefix("Value error, ")
    return FieldError(".".join(location) or "body", message)


def _from_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail) if exc.detail else "no such address"
    return problem(exc.status_code, "http", detail, detail, headers=exc.headers)


def _out_of_range(_: Request, exc: Exception) -> JSONResponse:
    # Python's dates end at year 9999: an instant near it, moved to UTC or to its next
    # slot, overflows. That is bad input, not a server fault.
    return problem(
        422,
        "invalid-input",
        "The input was refused",
        "a date or number is out of the supported range",
        [FieldError("body", "a date or number is out of the supported range")],
    )


def _unexpected(_: Request | None, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return problem(500, "internal", "Internal error", "something went wrong on the server")


def install(app: FastAPI) -> None:
    """Answer every error of `app` as problem+json."""
    app.add_exception_handler(StepwiseError, _from_stepwise)
    app.add_exception_handler(RequestValidationError, _from_request)
    app.add_exception_handler(HTTPException, _from_http)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(Exception, _unexpected)
