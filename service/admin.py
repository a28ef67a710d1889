"""The operator's work on the deployment: re-seal the secrets, let go of the database.

Not a workspace's: these act across every workspace, from the `stepwise` command on the
machine that holds the keys, with no acting person to check.
"""

from __future__ import annotations

from db.keys import reseal_secrets
from db.session import dispose_engine, session_scope


def reseal() -> int:
    """Seal every stored secret with the first of STEPWISE_SECRET_KEYS (after a new key is
    put first); returns how many. The older keys can go once this has run."""
    with session_scope() as session:
        return reseal_secrets(session)


def close() -> None:
    """Close this process's database connections (at exit, or after the URL changed)."""
    dispose_engine()
