"""Who may do what: roles, the permission table, and the acting person.

Pure values only. The database (`db.workspaces.authorize`) reads a person's role
from their membership row on every call and asks `can` here; the dashboard asks
the same table to decide which controls to draw, but hiding a button is never
what stops a write.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import Forbidden
from core.vocabulary import Permission, Role

# Created on first use (and by the migration for rows made before workspaces):
# local mode's only workspace, and where the STEPWISE_ADMINS start.
DEFAULT_WORKSPACE_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEFAULT_WORKSPACE_NAME = "Default"
# The one person of local mode (no login configured): admin of the default workspace.
LOCAL_ADMIN = "local admin"

_READ = frozenset({Permission.READ})
_EDIT = _READ | {Permission.EDIT, Permission.RUN}
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _READ,
    Role.EDITOR: _EDIT,
    Role.ADMIN: frozenset(Permission),
}


# What an inbound webhook may do: start a run of its automation (and read that automation).
WEBHOOK_PERMISSIONS = frozenset({Permission.READ, Permission.RUN})


def can(role: Role | str, permission: Permission) -> bool:
    """Whether `role` allows `permission` (an unknown role allows nothing)."""
    try:
        return permission in PERMISSIONS[Role(role)]
    except ValueError:
        return False


def require(role: Role | str, permission: Permission) -> None:
    """Raise Forbidden unless `role` allows `permission`."""
    if not can(role, permission):
        article = "an" if str(role)[:1] in "aeiou" else "a"
        raise Forbidden(f"{article} {role} may not {_WORDS[permission]} in this workspace")


_WORDS = {
    Permission.READ: "read",
    Permission.EDIT: "create, edit or delete automations and schedules",
    Permission.RUN: "run, retry or cancel executions",
    Permission.MANAGE_MEMBERS: "manage members",
    Permission.MANAGE_SECRETS: "manage secrets",
    Permission.MANAGE_QUOTAS: "change quotas",
    Permission.MANAGE_QUEUES: "retry or purge dead letters",
    Permission.MANAGE_TOKENS: "manage API tokens",
    Permission.MANAGE_CHANNELS: "manage notification channels",
}


def subject_of(name: str) -> str:
    """A person's key in memberships: e-mail addresses compare without case."""
    return name.strip().lower()


@dataclass(frozen=True)
class Login:
    """Who the login provider says signed in: its (issuer, subject) is the identity; the
    e-mail only finds the invitation it accepts, and only when the provider verified it."""

    issuer: str
    subject: str
    email: str | None = None  # lower-case, set only when it may match an invitation

    @classmethod
    def from_claims(
        cls, claims: Mapping[str, object], *, issuer: str, email_always_verified: bool = False
    ) -> Login:
        """The identity in an ID token's claims. The e-mail counts when `email_verified` is
        true, or absent with `email_always_verified` (a provider that never sends it); a
        value that is not an address (no @, spaces) never counts."""
        verified = claims.get("email_verified")
        if isinstance(verified, str):  # some providers send "true"
            verified = verified.strip().lower() == "true"
        email = claims.get("email")
        trusted = verified is True or (verified is None and email_always_verified)
        address = subject_of(email) if isinstance(email, str) else ""
        looks_like_one = "@" in address and not any(c.isspace() for c in address)
        iss = claims.get("iss")
        return cls(
            issuer=str(iss) if isinstance(iss, str) and iss else issuer,
            subject=str(claims.get("sub") or ""),
            email=address if trusted and looks_like_one else None,
        )


@dataclass(frozen=True)
class Actor:
    """A person acting in one workspace.

    `name` is who the audit log names; `role` is the role as last read, for drawing
    the page. Every `db` function re-reads the role from the membership row, so an
    Actor built by hand, or kept after the person was removed, grants nothing.
    """

    name: str
    workspace_id: uuid.UUID
    role: Role = Role.VIEWER
    # Set when an API token acts: its role is then read from the token's row (which
    # must not be revoked), not from a membership.
    token_id: uuid.UUID | None = None
    # Set when an automation's inbound webhook acts (db/webhooks.py): it may only read and
    # start runs, and only while the webhook exists.
    webhook_id: uuid.UUID | None = None

    @property
    def subject(self) -> str:
        return subject_of(self.name)

    def can(self, permission: Permission) -> bool:
        return can(self.role, permission)
