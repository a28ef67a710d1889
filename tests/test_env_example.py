"""`.env.example` lists every setting with its default, so it cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from core.settings import Settings, variable_name

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
_LINE = re.compile(r"^(?:# )?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _listed() -> dict[str, str]:
    """Each variable the file names (set, or commented out when it has no default) -> value."""
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        if match := _LINE.match(line):
            found[match.group(1)] = match.group(2)
    return found


def _written(default: Any) -> str:
    return str(default).lower() if isinstance(default, bool) else str(default)


def test_every_setting_is_listed_with_its_default() -> None:
    listed = _listed()
    for name, field in Settings.model_fields.items():
        variable = variable_name(name)
        assert variable in listed, f"{variable} is missing from .env.example"
        if field.default is not None:
            assert listed[variable] == _written(field.default), f"{variable}: default differs"


def test_every_listed_variable_has_a_meaning() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for n, line in enumerate(lines):
        if _LINE.match(line) and not lines[n - 1].startswith("# "):
            raise AssertionError(f"{line!r} has no comment saying what it means")


def test_nothing_listed_is_unknown() -> None:
    known = {variable_name(name) for name in Settings.model_fields}
    others = {"TZ", "dramatiq_worker_timeout", "TEST_DATABASE_URL", "TEST_REDIS_URL"}
    assert set(_listed()) <= known | others
