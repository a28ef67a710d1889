"""Text PostgreSQL can store: the rule every text a person or a program gives passes first.

PostgreSQL's text and jsonb cannot hold the NUL character, and UTF-8 cannot hold a
lone surrogate (half of a UTF-16 pair, which JSON's and YAML's `\\ud800` escapes
produce). Such text is refused field by field, before any other check looks at it (so
no other message quotes it), with the same message at every entry point: the API, the
dashboard's forms and `stepwise apply`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from core.errors import FieldError

UNSTORABLE = "must not contain NUL characters or broken Unicode (lone surrogates)"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """Whether PostgreSQL can store `text`."""
    return _UNSTORABLE.search(text) is None


def storable_value(value: Any) -> bool:
    """Whether every text in `value` (keys included, at any depth) is `storable`.

    Iterative, so no depth can overflow it."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not storable(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return True


def text_errors(fields: Iterable[tuple[str, str | None]]) -> list[FieldError]:
    """One FieldError for each (field, text) that PostgreSQL could not store."""
    return [
        FieldError(field, UNSTORABLE)
        for field, text in fields
        if text is not None and not storable(text)
    ]
