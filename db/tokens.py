"""API tokens: made and revoked by a workspace's admins, checked on every API call.

A token acts in one workspace with one role (never above what its admin could give).
Only its hash is stored (`core.tokens`); the token is returned once, by
`create_token`, and appears in no log, audit row or list. `authenticate` turns a
presented token into an `Actor` whose role `db.workspaces.authorize` re-reads from
the token's row on every call, so a revocation takes effect at the next call.
Functions take a session, scope every statement by the actor's workspace and never
commit; the role check and the audit row of a change are the caller's (`service.tokens`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import FieldError, NotFound, ValidationFailed
from core.limits import MAX_NAME, MAX_TOKEN_DAYS
from core.tokens import hash_matches, new_token, token_hash
from core.vocabulary import Permission, Role
from db.models import ApiToken
from db.workspaces import authorize

# "Last used" is written at most this often per token: a busy script does not turn
# every read into a write.
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenInfo:
    """What anyone managing tokens may know of one: never the token itself."""

    id: uuid.UUID
    name: str
    role: Role
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class NewToken:
    """A token just made: `token` is shown to its maker this once, then only its hash remains."""

    info: TokenInfo
    token: str


def create_token(
    session: Session,
    name: str,
    role: Role | str,
    *,
    actor: Actor,
    expires_in_days: int | None = None,
) -> NewToken:
    """A new token for the acting workspace with `role` (its name and role checked), live
    until revoked or, given `expires_in_days`, until that many days from now."""
    name = name.strip()
    errors = []
    if not name or len(name) > MAX_NAME:
        errors.append(FieldError("name", f"give a name of 1 to {MAX_NAME} characters"))
    if role not in set(Role):
        errors.append(FieldError("role", "use viewer, editor or admin"))
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        errors.append(FieldError("expires_in_days", f"give 1 to {MAX_TOKEN_DAYS} days, or none"))
    if errors:
        raise ValidationFailed(errors)
    token = new_token()
    row = ApiToken(
        workspace_id=actor.workspace_id,
        name=name,
        role=Role(role),
        token_hash=token_hash(token),
        created_by=actor.name,
        expires_at=None
        if expires_in_days is None
        else func.now() + timedelta(days=expires_in_days),
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return NewToken(_info(row), token)


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
    )


def list_tokens(session: Session, *, actor: Actor) -> list[TokenInfo]:
    """The acting workspace's tokens, live ones first, newest first (admins only)."""
    authorize(session, actor, Permission.MANAGE_TOKENS)
    rows = session.scalars(
        select(ApiToken)
        .where(ApiToken.workspace_id == actor.workspace_id)
        .order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc(), ApiToken.id)
    ).all()
    return [_info(row) for row in rows]


def revoke_token(session: Session, token_id: uuid.UUID, *, actor: Actor) -> str:
    """Revoke a live token of the acting workspace, returning its name: its next call is
    refused."""
    name = session.scalar(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            ApiToken.workspace_id == actor.workspace_id,
            ApiToken.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
        .returning(ApiToken.name)
    )
    if name is None:
        raise NotFound(f"no live API token {token_id} in this workspace")
    return str(name)


def authenticate(session: Session, token: str) -> Actor | None:
    """The actor a presented token stands for, or None if it is unknown, revoked or expired.

    Records when the token was last used (to the minute).
    """
    digest = token_hash(token)
    row = session.execute(
        select(
            ApiToken.id, ApiToken.workspace_id, ApiToken.name, ApiToken.role, ApiToken.token_hash
        ).where(ApiToken.token_hash == digest, live())
    ).first()
    if row is None or not hash_matches(token, row.token_hash):
        return None
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == row.id,
            or_(
                ApiToken.last_used_at.is_(None),
                ApiToken.last_used_at < func.now() - LAST_USED_PRECISION,
            ),
        )
        .values(last_used_at=func.now())
    )
    return Actor(
        name=actor_name(row.name),
        workspace_id=row.workspace_id,
        role=Role(row.role),
        token_id=row.id,
    )


def live() -> ColumnElement[bool]:
    """A token row that may act: not revoked, not expired (by the database's clock)."""
    return and_(
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
    )


def actor_name(token_name: str) -> str:
    """How the audit log names what a token did."""
    return f"API token {token_name}"[:MAX_NAME]
