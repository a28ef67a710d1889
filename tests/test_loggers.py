"""Every module of ours logs through `logging.getLogger(__name__)`.

A logger named by hand ("stepwise", "stepwise.api") hides where a line comes from and
invites configuring a name nothing else uses; only third-party loggers, which we capture
or quieten by their own names, are looked up by a literal.
"""

from __future__ import annotations

import re

from testkit import architecture

THIRD_PARTY = ("apprise", "urllib3.", "streamlit.", "sqlalchemy.", "alembic.")
_NAMED = re.compile(r"getLogger\(\s*[\"']([^\"']*)[\"']")


def test_no_product_module_names_a_logger_of_its_own_by_hand() -> None:
    named = [
        f"{module.path}: {name}"
        for module in architecture.all_modules()
        for name in _NAMED.findall((architecture.ROOT / module.path).read_text(encoding="utf-8"))
        if not name.startswith(THIRD_PARTY)
    ]

    assert not named, f"log with logging.getLogger(__name__), not a literal name: {named}"
