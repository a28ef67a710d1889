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
`callback_url`: `<STEPWISE_PUBLIC_URL>/v1/callbacks/<token>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from core.errors import InvalidState, NotAuthenticated, StepwiseError
from core.secrets import SecretBox, SecretUnreadable

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
