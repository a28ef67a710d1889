"""a workspace secret is bound to the agent origins it may be sent to

`workspace_secrets.origins` lists them (`scheme://host:port`, set by an admin). So that
no running automation stops at the upgrade, each existing secret is bound to the
origins of the automations that already name it in their headers; an admin reviews
them on the Workspace page. The origin is written out here as `core.secrets.origin_of`
wrote it at this revision (so this revision keeps meaning what it meant).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 12:00:00
"""

import json
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFERENCE = re.compile(r"\{\{\s*secret\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        host = parts.hostname or ""
        host = host.encode("idna").decode("ascii").lower().removesuffix(".")
    except (ValueError, UnicodeError):
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}:{port}"


def upgrade() -> None:
    op.add_column(
        "workspace_secrets",
        sa.Column(
            "origins",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    bind = op.get_bind()
    bound: dict[tuple[str, str], set[str]] = {}
    rows = bind.execute(
        sa.text("SELECT workspace_id, agent_url, request_headers FROM automations")
    ).all()
    for workspace_id, agent_url, headers in rows:
        origin = _origin(agent_url)
        for value in (headers or {}).values():
            for name in REFERENCE.findall(str(value)):
                if origin is not None:
                    bound.setdefault((str(workspace_id), name), set()).add(origin)
    for (workspace_id, name), origins in bound.items():
        bind.execute(
            sa.text(
                "UPDATE workspace_secrets SET origins = CAST(:origins AS jsonb) "
                "WHERE workspace_id = CAST(:w AS uuid) AND name = :name"
            ),
            {"origins": json.dumps(sorted(origins)), "w": workspace_id, "name": name},
        )


def downgrade() -> None:
    op.drop_column("workspace_secrets", "origins")
