"""Who acts: a person as a member of one workspace, and the local admin, made so on first use.

The local admin exists only while no login is configured: with login, a command must name
the member it acts as (`--as`), and nothing makes the local admin a member again.

The configuration is the authority on admins (STEPWISE_ADMINS, or the local admin when
no login is configured): each entry point makes them admins of the default workspace
before it resolves who is acting, in a short transaction of its own or inside the unit
of work that follows (which then undoes it if it rolls back: `stepwise apply --dry-run`).
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from core.access import DEFAULT_WORKSPACE_ID, LOCAL_ADMIN, Actor
from core.errors import Forbidden
from core.settings import get_settings
from core.vocabulary import Role
from db import workspaces
from db.session import session_scope


def member(person: str | None, workspace_id: uuid.UUID | None = None) -> Actor:
    """`member_in`, in its own transaction."""
    with session_scope() as session:
        return member_in(session, person, workspace_id)


def member_in(session: Session, person: str | None, workspace_id: uuid.UUID | None = None) -> Actor:
    """`person` (None: the local admin, made so first) acting in `workspace_id`, or in
    their first workspace; Forbidden unless they are a member there. In the caller's
    transaction: a unit of work that rolls back undoes the local admin's making too."""
    acting = person or LOCAL_ADMIN
    if person is None:
        _require_local_mode()
        workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    actor = workspaces.acting_as(session, acting, workspace_id)
    if actor is None or (workspace_id is not None and actor.workspace_id != workspace_id):
        raise Forbidden(f"{acting} is not a member of that workspace")
    return actor


def local_admin(session: Session) -> Actor:
    """This machine's operator: the local admin, in the default workspace (made so), in
    the caller's transaction."""
    _require_local_mode()
    workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    return Actor(name=LOCAL_ADMIN, workspace_id=DEFAULT_WORKSPACE_ID, role=Role.ADMIN)


def _require_local_mode() -> None:
    # With login configured every person is a provider identity: there is no local admin
    # to fall back on (`web` drops its memberships), so a command must name its member.
    if get_settings().login_required:
        raise Forbidden("login is configured: name the member to act as (--as <e-mail>)")
