"""Definitions as code: `stepwise apply -f` and `stepwise export-defs`, on a real database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db.models import AuditLog, Automation, Schedule
from db.session import session_scope
from stepwise.cli import main

pytestmark = pytest.mark.usefixtures("db")

DEFS = """
automations:
  - name: Nightly report
    agent_url: https://agent.example.com/run
    request_headers:
      Authorization: "Bearer {{ secret.AGENT_TOKEN }}"
    steps:
      - {name: gather, message: Gather the numbers}
      - {name: write, message: Write the report}
    schedules:
      - {kind: cron, cron_expr: "0 2 * * *", timezone: Europe/Paris, end_at: 2030-01-01T00:00:00Z}
      - {kind: interval, interval_s: 3600, input: {region: eu}}
"""


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return int(done.value.code or 0)


def counts() -> tuple[int, int, int]:
    with session_scope() as s:
        return (
            s.scalar(select(func.count()).select_from(Automation)) or 0,
            s.scalar(select(func.count()).select_from(Schedule)) or 0,
            s.scalar(select(func.count()).select_from(AuditLog)) or 0,
        )


def stamps() -> list[object]:
    with session_scope() as s:
        return list(s.scalars(select(Schedule.updated_at).order_by(Schedule.id))) + list(
            s.scalars(select(Automation.updated_at).order_by(Automation.id))
        )


def test_apply_twice_changes_nothing_the_second_time(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    assert run("apply", "-f", str(path)) == 0
    first, before = counts(), stamps()
    assert first[:2] == (1, 2)
    assert run("apply", "-f", str(path)) == 0
    assert counts() == first and stamps() == before
    assert "no changes" in capsys.readouterr().out


def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    assert run("apply", "-f", str(path), "--dry-run") == 0
    assert counts() == (0, 0, 0)
    assert run("apply", "-f", str(path)) == 0
    path.write_text(DEFS.replace("0 2 * * *", "0 3 * * *"))
    capsys.readouterr()
    assert run("apply", "-f", str(path), "--dry-run") == 0
    assert "cron_expr: '0 2 * * *' -> '0 3 * * *'" in capsys.readouterr().out
    with session_scope() as s:
        assert "0 2 * * *" in set(s.scalars(select(Schedule.cron_expr)))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("automations: [", "YAML syntax error"),
        (DEFS.replace("agent_url:", "agent_uri:"), "Nightly report: agent_uri: unknown field"),
        (DEFS.replace('"0 2 * * *"', '"0 99 * * *"'), "schedule #1: cron_expr: '0 99 * * *'"),
        (DEFS.replace("    steps:", "    max_retries: two\n    steps:"), "max_retries: must be"),
        (DEFS.replace("interval_s: 3600,", "interval_s: 3600, jitter_s: x,"), "#2: jitter_s"),
        (DEFS.replace("https://agent.example.com/run", "not a url"), "agent_url"),
    ],
)
def test_bad_file_writes_nothing_and_names_the_field(
    tmp_path: Path, capsys: Any, text: str, named: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert run("apply", "-f", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and named in err
    assert counts() == (0, 0, 0)


def test_export_then_apply_reproduces_the_definitions(
    tmp_path: Path, database_url: str, capsys: Any
) -> None:
    path, out = tmp_path / "in.yaml", tmp_path / "out.yaml"
    path.write_text(DEFS)
    assert run("apply", "-f", str(path)) == 0
    assert run("export-defs", "-o", str(out)) == 0
    exported = out.read_text()
    assert "{{ secret.AGENT_TOKEN }}" in exported and "signing" not in exported
    assert run("apply", "-f", str(out)) == 0
    assert "no changes" in capsys.readouterr().out
    with session_scope() as s:  # an empty database: no definitions at all
        s.execute(Schedule.__table__.delete())
        s.execute(Automation.__table__.delete())
    assert run("apply", "-f", str(out)) == 0
    again = tmp_path / "again.yaml"
    assert run("export-defs", "-o", str(again)) == 0
    assert again.read_text() == exported
