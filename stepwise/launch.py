"""`stepwise dramatiq ...` and `stepwise periodiq ...`: their own commands, logging through ours.

Dramatiq's and periodiq's command lines call `logging.basicConfig`, which does nothing
once the root logger has a handler: set up first (`core.logs`), every line they and
their worker processes write, theirs and ours, comes out in one format.
"""

from __future__ import annotations

import sys

from core.logs import configure_logging


def dramatiq(arguments: list[str]) -> int:
    """Run Dramatiq's command (`dramatiq ARGUMENTS`) with Stepwise's logging."""
    configure_logging()
    from dramatiq.cli import main

    sys.argv = ["dramatiq", *arguments]
    return int(main() or 0)  # type: ignore[no-untyped-call]


def periodiq(arguments: list[str]) -> int:
    """Run periodiq's command (`periodiq ARGUMENTS`) with Stepwise's logging."""
    configure_logging()
    from periodiq import entrypoint

    sys.argv = ["periodiq", *arguments]
    entrypoint()  # exits
    return 0
