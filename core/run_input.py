"""A run's input: the JSON object a schedule, a caller or a webhook gives a run.

The agent receives it with every step as `input` (null when none was given). It is
parsed once, here, wherever it comes from (a form's text, an API body, a webhook's
raw bytes), and trusted below: a JSON object of at most MAX_INPUT_BYTES that
PostgreSQL's jsonb can store.
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import ValidationFailed
from core.limits import MAX_INPUT_BYTES, MAX_OUTPUT_DEPTH
from core.outcome import storable_json
from core.text import UNSTORABLE, storable_value

RunInput = dict[str, Any]
FIELD = "input"


def parse_run_input(value: Any, *, field: str = FIELD) -> RunInput | None:
    """`value` as a run's input: None or blank text is no input; text or bytes are read
    as JSON; the result must be a storable JSON object. ValidationFailed names `field`."""
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return None
    if isinstance(value, str | bytes):
        if len(value) > MAX_INPUT_BYTES:
            raise ValidationFailed.single(field, _too_big())
        value = _loads(value, field)
    if not isinstance(value, dict):
        raise ValidationFailed.single(field, 'must be a JSON object, like {"key": "value"}')
    if (problem := _unbounded(value)) is not None:
        raise ValidationFailed.single(field, problem)
    if not storable_value(value):
        raise ValidationFailed.single(field, UNSTORABLE)
    if not storable_json(value):
        raise ValidationFailed.single(
            field,
            f"must not contain NaN or infinity, nor nest deeper than {MAX_OUTPUT_DEPTH} levels",
        )
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_INPUT_BYTES:
        raise ValidationFailed.single(field, _too_big())
    return value


def _unbounded(value: Any) -> str | None:
    """Why `value` is too big or too deep to be checked further, or None. Each value takes
    at least one byte of JSON, so more values than MAX_INPUT_BYTES is too big: counted
    without expanding anything, as a value read from YAML may share one list many times
    over (aliases) and stand for billions of values in a few hundred bytes."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > MAX_INPUT_BYTES:
            return _too_big()
        if isinstance(item, list | dict):
            if depth > MAX_OUTPUT_DEPTH:
                return f"must not nest deeper than {MAX_OUTPUT_DEPTH} levels"
            children = item if isinstance(item, list) else [*item, *item.values()]
            pending.extend((child, depth + 1) for child in children)
    return None


def _loads(text: str | bytes, field: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        message = f"nests deeper than {MAX_OUTPUT_DEPTH} levels"
        raise ValidationFailed.single(field, message) from None
    except UnicodeDecodeError:
        raise ValidationFailed.single(field, "is not UTF-8 text") from None
    except ValueError as exc:
        # json.JSONDecodeError says where: "Expecting ',' delimiter: line 1 column 9 (char 8)".
        raise ValidationFailed.single(field, f"is not valid JSON ({exc})") from None


def _too_big() -> str:
    return f"must be at most {MAX_INPUT_BYTES // 1024} KiB of JSON"
