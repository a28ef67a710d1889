"""Waiting for what real processes do, with a message that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 30,
    interval: float = 0.1,
    message: str = "condition",
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll until `predicate()` is truthy; fail with `message` after `timeout` seconds.

    `details` is asked for what to show on failure (a row's state, a process log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = f"\n{details()}" if details else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {message}{extra}")
