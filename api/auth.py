"""Who is calling: the API token in `Authorization: Bearer <token>`, turned into an Actor.

Every route but health, the docs and the webhooks depends on `acting`; the gate
(`api.gate`) authenticates those routes' calls before their body is read. The token's workspace and
role come from its row (`service.tokens.authenticate`); every read and write then
checks that role again, in its own transaction, so a token revoked between two calls
acts no more.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import ratelimit
from api.problems import RateLimited
from core.access import Actor
from core.errors import NotAuthenticated
from core.settings import get_settings
from service import tokens

# Longer than any token we make: a bigger header is refused before any hashing.
_MAX_TOKEN = 200

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token, made by a workspace admin on the dashboard's Workspace page.",
)


def acting(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor:
    """The workspace and role the presented token acts with: as the gate (`api.gate`)
    found it before the body was read, else found now."""
    known = getattr(request.state, "actor", None)
    if isinstance(known, Actor):
        return known
    return authenticate(credentials.credentials if credentials else None)


def authenticate(token: str | None) -> Actor:
    """The workspace and role `token` acts with; 401 without a live token, 429 (with
    Retry-After) past the token's calls per minute (this call counts as one)."""
    if not token:
        raise NotAuthenticated("send an API token as `Authorization: Bearer <token>`")
    actor = None
    if len(token) <= _MAX_TOKEN:
        actor = tokens.authenticate(token)
    if actor is None:
        raise NotAuthenticated("the API token is not known, or it was revoked")
    assert actor.token_id is not None
    wait = ratelimit.seconds_to_wait(actor.token_id)
    if wait:
        raise RateLimited(
            f"this token made its {get_settings().api_rate_per_minute} calls for this minute; "
            f"try again in {wait} s",
            retry_after=wait,
        )
    return actor


Acting = Annotated[Actor, Depends(acting)]
