"""Builders shared by the pure timing tests (test_cron, test_timing, test_schedule).

A plain module, not a test module: `cron_spec`/`every_spec`/`once_spec` build the raw
`ScheduleSpec` (for tests of validation), `cron`/`every`/`once` parse it into the
trusted `Timing` every slot function takes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.errors import ValidationFailed
from core.timing import ScheduleSpec, Timing, parse_timing

MINUTE = timedelta(minutes=1)
NY, BERLIN, LORD_HOWE = "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


def cron_spec(expr: str, zone: str = "UTC", **kwargs: object) -> ScheduleSpec:
    return ScheduleSpec(kind="cron", timezone=zone, cron_expr=expr, **kwargs)  # type: ignore[arg-type]


def every_spec(seconds: int, anchor: datetime, **kwargs: object) -> ScheduleSpec:
    return ScheduleSpec(kind="interval", interval_s=seconds, anchor=anchor, **kwargs)  # type: ignore[arg-type]


def once_spec(run_at: datetime, zone: str = "UTC") -> ScheduleSpec:
    return ScheduleSpec(kind="once", timezone=zone, run_at=run_at)


def cron(expr: str, zone: str = "UTC", **kwargs: object) -> Timing:
    return parse_timing(cron_spec(expr, zone, **kwargs))


def every(seconds: int, anchor: datetime, **kwargs: object) -> Timing:
    return parse_timing(every_spec(seconds, anchor, **kwargs))


def once(run_at: datetime, zone: str = "UTC") -> Timing:
    return parse_timing(once_spec(run_at, zone))


def errors_of(spec: ScheduleSpec) -> dict[str, str]:
    """The messages `parse_timing` rejects `spec` with, by field (it must reject it)."""
    with pytest.raises(ValidationFailed) as caught:
        parse_timing(spec)
    return {e.field: e.message for e in caught.value.errors}


def hm(instants: list[datetime]) -> list[str]:
    return [f"{i:%m-%d %H:%MZ}" for i in instants]
