"""The `stepwise` command run inside the test's own process."""

from __future__ import annotations

import pytest


def cli(*argv: str) -> int:
    """`stepwise <argv>` run here (its output goes to the test's capture); its exit code."""
    from stepwise.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return int(done.value.code or 0)
