"""Durable waits' signed tokens: a callback URL for an async agent, a link for an approval.

A token is a Fernet token (`cryptography`: AES-128-CBC + HMAC-SHA256) sealed through the
deployment's secret box (`STEPWISE_SECRET_KEYS`, `core.secrets`): the first key seals,
every key opens (MultiFernet), so a token made before a key rotation still opens while
the old key is configured, and one made under a key no longer configured, tampered with,
or made up opens with none (`TokenRefused`). Its payload is
`{"purpose", "step_run_id", "expires_at"}`: it names one step run (one attempt of one
step), and a token of one purpose never opens as the other. Nothing about the token is
stored: the step run's row decides whether it is still open (single use, its
`wait_until`), on the database's clock (`db.waits`).

`callback_url(settings, step_run_id, expires_at)` is what an async step's call carries as
`callback_url`: `<STEPWISE_PUBLIC_URL>/v1/callbacks/<token>`. Also here, pure: what an
agent may POST there (`parse_callback`: output, error or progress), a decision's comment,
and on whom a waiting step waits, in words (`waiting_on`). The errors a resolution may
meet say what the API answers: TokenRefused 401, WaitClosed 409, WaitGone 410,
WaitNotReady 503.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from core.errors import InvalidState, NotAuthenticated, StepwiseError, ValidationFailed
from core.limits import MAX_OUTPUT_DEPTH, MAX_WAIT_NOTE
from core.secrets import SecretBox, SecretUnreadable
from core.text import UNSTORABLE, storable, storable_value

if TYPE_CHECKING:
    from core.settings import Settings

CALLBACK_PATH = "/v1/callbacks/"
# Longer than any token we make (about 250 characters): a longer one is refused unread.
MAX_TOKEN_CHARS = 1000
_TOKEN_FORM = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class WaitPurpose(StrEnum):
    """What a token may do: answer an async step, or decide an approval."""

    CALLBACK = "callback"
    APPROVAL = "approval"


class TokenRefused(NotAuthenticated):
    """A wait's token that proves nothing: made up, tampered with, sealed under a key no
    longer configured, or made for another purpose; nothing was written."""


class WaitGone(StepwiseError):
    """The wait's deadline passed (or its token expired) before it was answered: the step
    ended by its timeout rule; nothing was written."""


class WaitNotReady(StepwiseError):
    """A callback that came before its step's `202` was recorded (the agent answered at
    once): nothing was written; the same callback a moment later is taken (503 with
    Retry-After)."""

    retry_after = 1


class WaitClosed(InvalidState):
    """The wait was already answered (single use), or its run was cancelled or ended;
    nothing was written."""


@dataclass(frozen=True)
class WaitToken:
    """What an opened token says: its purpose, the step run it answers, until when."""

    purpose: WaitPurpose
    step_run_id: int
    expires_at: datetime  # aware, UTC

    def expired(self, now: datetime) -> bool:
        """Whether the token is past its expiry at `now` (the database's clock)."""
        return now >= self.expires_at


def _aware(instant: datetime) -> datetime:
    if instant.utcoffset() is None:
        raise ValueError("a token's expiry must be an aware datetime (UTC)")
    return instant


def seal_token(box: SecretBox, purpose: WaitPurpose, step_run_id: int, expires_at: datetime) -> str:
    """A token for `purpose` on the step run `step_run_id`, valid until `expires_at`."""
    payload = {
        "purpose": str(purpose),
        "step_run_id": int(step_run_id),
        "expires_at": _aware(expires_at).isoformat(),
    }
    return box.seal(json.dumps(payload, separators=(",", ":")))


def open_token(box: SecretBox, token: str, purpose: WaitPurpose) -> WaitToken:
    """What `token` says, if it is ours and made for `purpose`; TokenRefused otherwise.

    Expiry is not checked here: the caller compares `expires_at` with the database's clock
    where it decides (`WaitToken.expired`).
    """
    refused = TokenRefused("this link is not valid: it was not made by this Stepwise, or altered")
    if len(token) > MAX_TOKEN_CHARS or len(token) % 4 or not _TOKEN_FORM.fullmatch(token):
        raise refused  # base64 ignores what follows its padding: only our exact form
    try:
        payload: Any = json.loads(box.open(token))
    except (SecretUnreadable, ValueError):
        raise refused from None
    if not isinstance(payload, dict) or payload.get("purpose") != str(purpose):
        raise refused
    step_run_id = payload.get("step_run_id")
    if not isinstance(step_run_id, int) or isinstance(step_run_id, bool):
        raise refused
    try:
        expires_at = _aware(datetime.fromisoformat(str(payload.get("expires_at"))))
    except ValueError:
        raise refused from None
    return WaitToken(purpose, step_run_id, expires_at)


def callback_token(settings: Settings, step_run_id: int, expires_at: datetime) -> str:
    """The callback token of an async step's run, sealed with the settings' first key."""
    return seal_token(settings.secret_box(), WaitPurpose.CALLBACK, step_run_id, expires_at)


def callback_url(settings: Settings, step_run_id: int, expires_at: datetime) -> str:
    """`<STEPWISE_PUBLIC_URL>/v1/callbacks/<token>`: where the agent of an async step POSTs
    its result (or progress) for the step run `step_run_id`, until `expires_at`."""
    token = callback_token(settings, step_run_id, expires_at)
    return f"{settings.public_base_url()}{CALLBACK_PATH}{token}"


def approval_token(settings: Settings, step_run_id: int, expires_at: datetime) -> str:
    """A token that names an approval step's run (for a link to decide it); never a
    callback's."""
    return seal_token(settings.secret_box(), WaitPurpose.APPROVAL, step_run_id, expires_at)


# --- what an agent may POST to its callback URL ------------------------------------------------

# An agent's reported failure and a person's comment on a decision, as stored.
MAX_CALLBACK_ERROR = 2000
MAX_DECISION_COMMENT = 2000


@dataclass(frozen=True)
class CallbackOutput:
    """The step succeeded with `output` (any JSON): its dependents receive it."""

    output: Any


@dataclass(frozen=True)
class CallbackError:
    """The agent reports the step failed, and why."""

    error: str


@dataclass(frozen=True)
class CallbackProgress:
    """The agent is still at it: how far (0..100, optional) and a note (optional)."""

    progress: int | None
    note: str | None


Callback = CallbackOutput | CallbackError | CallbackProgress
CALLBACK_FORMS = (
    '{"output": <any JSON>}, {"error": "<why>"} or {"progress": <0..100>, "note": "<text>"}'
)


class CallbackUnreadable(ValidationFailed):
    """A callback's body that is not JSON at all (400); nothing was written."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can hold")


def _finite_number(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large a number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_number)


def _depth(value: Any) -> int:
    """How deep `value` nests (iterative: no depth overflows it)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_callback(raw: bytes) -> Callback:
    """A callback's body as what it says. CallbackUnreadable if it is not JSON (UTF-8);
    ValidationFailed (naming the field) for JSON that is not one of CALLBACK_FORMS;
    nothing is written either way."""
    try:
        body: Any = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "it nests too deep"
        raise CallbackUnreadable.single(
            "body", f"is not JSON ({reason[:200]}): send {CALLBACK_FORMS}"
        ) from None
    if not isinstance(body, dict):
        raise ValidationFailed.single("body", f"must be a JSON object: {CALLBACK_FORMS}")
    given = set(body)
    unknown = sorted(given - {"output", "error", "progress", "note"})
    if unknown:
        raise ValidationFailed.single(unknown[0], f"is not a callback field: {CALLBACK_FORMS}")
    if "output" in given:
        if len(given) > 1:
            raise ValidationFailed.single("output", "comes alone: an answer is output or error")
        if not storable_value(body["output"]):
            raise ValidationFailed.single("output", UNSTORABLE)
        if _depth(body["output"]) > MAX_OUTPUT_DEPTH:
            raise ValidationFailed.single(
                "output", f"must nest at most {MAX_OUTPUT_DEPTH} levels deep"
            )
        return CallbackOutput(body["output"])
    if "error" in given:
        if len(given) > 1:
            raise ValidationFailed.single("error", "comes alone: an answer is output or error")
        error = body["error"]
        if not isinstance(error, str) or not error.strip():
            raise ValidationFailed.single("error", "must be a text saying why the step failed")
        return CallbackError(_text("error", error, MAX_CALLBACK_ERROR))
    if not given:
        raise ValidationFailed.single("body", f"is empty: send {CALLBACK_FORMS}")
    progress = body.get("progress")
    if progress is not None and (
        isinstance(progress, bool)
        or not isinstance(progress, int | float)
        or not 0 <= progress <= 100
    ):
        raise ValidationFailed.single("progress", "must be a number from 0 to 100")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise ValidationFailed.single("note", "must be a text")
    return CallbackProgress(
        None if progress is None else round(progress),
        None if note is None else _text("note", note, MAX_WAIT_NOTE),
    )


def _text(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise ValidationFailed.single(field, f"must be at most {limit:,} characters")
    if not storable(value):
        raise ValidationFailed.single(field, UNSTORABLE)
    return value


def decision_comment(comment: str | None) -> str | None:
    """A person's comment on a decision, checked (ValidationFailed on `comment`); None if
    empty."""
    if comment is None or not comment.strip():
        return None
    return _text("comment", comment.strip(), MAX_DECISION_COMMENT)


# --- what a waiting step waits on -----------------------------------------------------------

_ARTICLES = {"admin": "an admin", "editor": "an editor"}


def role_phrase(role: str) -> str:
    """ "an editor", "an admin": the weakest role that may decide an approval."""
    return _ARTICLES.get(role, f"a {role}")


def waiting_on(wait: dict[str, Any] | None, wait_until: datetime | None) -> str:
    """On whom a waiting step waits, in words: "the agent", "approval by an editor",
    "until 2026-12-07 14:05:00 UTC"."""
    kind = (wait or {}).get("kind")
    if kind == "async":
        return "the agent"
    if kind == "approval":
        return f"approval by {role_phrase(str((wait or {}).get('role') or 'editor'))}"
    if wait_until is None:
        return "a wait"
    return f"until {wait_until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
