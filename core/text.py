"""Text PostgreSQL can store: the rule every text a person or a program gives passes first.

PostgreSQL's text and jsonb cannot hold the NUL character, and UTF-8 cannot hold a
lone surrogate (half of a UTF-16 pair, which JSON's and YAML's `\\ud800` escapes
produce). Such text is refused field by field, before any other check looks at it (so
no other message quotes it), with the same message at every entry point: the API, the
dashboard's forms and `stepwise apply`.

Also here: compact JSON as the runner writes it (`json_bytes`), one function for every
body it sends and every batch of rows it stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import orjson

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


def json_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON, as `json.dumps(value, separators=(",", ":"),
    ensure_ascii=False).encode()` writes it, for a fraction of the CPU (orjson, in Rust:
    the runner's agent bodies and batched rows spent 6 % of a worker's CPU in the
    standard encoder, bench/RESULTS.md). Numbers may be spelled otherwise (`1e16` for
    `1e+16`), never valued otherwise. What orjson refuses, an integer past 64 bits or a
    key that is not a text, goes through the standard encoder, with its errors (a lone
    surrogate raises UnicodeEncodeError from both)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
