"""`Idempotency-Key` for API creates: the same request sent twice makes one object.

The key is claimed in the create's own transaction (`claim` before the create,
`remember` after it), so a key is stored exactly when its object was made: a failed
create leaves no key, and a concurrent repeat waits on the key's row, then finds the
object. Keys belong to the token that sent them. Functions take a session and never
commit.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import ValidationFailed
from core.limits import MAX_NAME
from db.models import IdempotencyKey
from db.session import locked_batch, rowcount

FIELD = "Idempotency-Key"
# Stands for "claimed, object not made yet": only ever seen inside the claiming transaction.
_PENDING = uuid.UUID(int=0)


def claim(session: Session, actor: Actor, key: str, fingerprint: str) -> uuid.UUID | None:
    """None if `key` is new (now held by this transaction); else the id of what it made.

    ValidationFailed if the key is malformed or was used with another request.
    """
    if actor.token_id is None:
        return None
    if not key or len(key) > MAX_NAME or not key.isprintable():
        raise ValidationFailed.single(FIELD, f"give 1 to {MAX_NAME} printable characters")
    claimed = session.execute(
        insert(IdempotencyKey)
        .values(token_id=actor.token_id, key=key, fingerprint=fingerprint, target_id=_PENDING)
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    ).first()
    if claimed is not None:
        return None
    seen = session.execute(
        select(IdempotencyKey.fingerprint, IdempotencyKey.target_id).where(
            IdempotencyKey.token_id == actor.token_id, IdempotencyKey.key == key
        )
    ).one()
    if seen.fingerprint != fingerprint:
        raise ValidationFailed.single(FIELD, "was already used for a different request")
    return uuid.UUID(str(seen.target_id))


def remember(session: Session, actor: Actor, key: str, target_id: uuid.UUID) -> None:
    """Record what the request holding `key` made (in the same transaction as the claim)."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.token_id == actor.token_id, IdempotencyKey.key == key)
        .values(target_id=target_id)
    )


def purge(session: Session, *, older_than_hours: int, batch: int) -> int:
    """Delete one batch of keys older than the retention; how many were deleted.

    Housekeeping's, for every workspace (no actor: keys hold no workspace data but the
    ids they made). A repeat after this makes a new object. The caller loops while a
    full batch was deleted; each batch is its own short transaction.
    """
    cutoff = func.now() - timedelta(hours=older_than_hours)
    victims = locked_batch(
        select(IdempotencyKey.token_id, IdempotencyKey.key)
        .where(IdempotencyKey.created_at < cutoff)
        .limit(batch)
        .with_for_update(skip_locked=True),
        "victims",
    )
    return rowcount(
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.token_id == victims.c.token_id,
                IdempotencyKey.key == victims.c.key,
            )
        )
    )
