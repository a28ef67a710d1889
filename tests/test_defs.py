"""Definitions as code: `stepwise apply -f` and `stepwise export-defs`, on a real database."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import yaml
from sqlalchemy import func, select

from core.access import LOCAL_ADMIN
from db.models import AuditLog, Automation, NotifyRule, Schedule
from db.session import session_scope
from stepwise.defs import DefinitionError, load
from testkit.cli import cli
from testkit.factories import (
    make_automation,
    make_channel,
    make_workspace,
    person,
    table_snapshot,
)

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


# Every field an automation and a schedule can have, none at its default.
FULL = """
automations:
  - name: Nightly report
    description: Numbers for the finance team
    agent_url: https://agent.example.com/run
    project_context: Figures are in euros.
    step_timeout_s: 120
    max_retries: 2
    owner_id: ops@example.com
    request_headers:
      Authorization: "Bearer {{ secret.AGENT_TOKEN }}"
      X-Team: finance
    concurrency_limit: 3
    rate_limit_per_s: 0.5
    urgent: true
    notifications: {channels: [ops], failure_threshold: 2}
    steps:
      - {name: gather, message: Gather the numbers}
      - {name: write, message: Write the report}
    schedules:
      - kind: cron
        cron_expr: "0 2 * * 1-5"
        timezone: Europe/Paris
        start_at: "2025-01-01T00:00:00+00:00"
        end_at: "2030-01-01T00:00:00+00:00"
        max_runs: 500
        misfire_policy: run_all
        catchup_window_s: 7200
        overlap_policy: buffer_one
        jitter_s: 30
        input: {region: eu, days: [1, 2]}
      - {kind: interval, interval_s: 3600, enabled: false, pause_note: Waiting for the new agent}
      - {kind: once, run_at: "2031-06-01T09:30:00+00:00", misfire_policy: skip}
  - name: Weekly digest
    agent_url: https://agent.example.com/digest
    steps: [{name: digest, message: Sum up the week}]
"""


def contains(big: Any, small: Any) -> bool:
    """Every value of `small` is in `big` (mappings may hold more: the defaults)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(big) == len(small)
            and all(any(contains(b, s) for b in big) for s in small)
        )
    return bool(big == small)


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
    assert cli("apply", "-f", str(path)) == 0
    first, before = counts(), stamps()
    assert first[:2] == (1, 2)
    assert cli("apply", "-f", str(path)) == 0
    assert counts() == first and stamps() == before
    assert "no changes" in capsys.readouterr().out


def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    make_channel("ops", "json://127.0.0.1:9/hook")
    path = tmp_path / "stepwise.yaml"
    path.write_text(FULL)
    before = table_snapshot()
    assert cli("apply", "-f", str(path), "--dry-run") == 0
    assert "+ automation 'Nightly report' schedule #3" in capsys.readouterr().out
    assert table_snapshot() == before
    assert cli("apply", "-f", str(path)) == 0
    changed = FULL.replace("0 2 * * 1-5", "0 3 * * 1-5").replace("new agent", "new model")
    path.write_text(changed.replace("failure_threshold: 2", "failure_threshold: 5"))
    before = table_snapshot()
    capsys.readouterr()
    assert cli("apply", "-f", str(path), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "schedule #1: cron_expr: '0 2 * * 1-5' -> '0 3 * * 1-5'" in out
    assert "pause_note: 'Waiting for the new agent' -> 'Waiting for the new model'" in out
    assert "notifications: failure_threshold: 2 -> 5" in out
    assert "would change 3 item(s)" in out
    assert table_snapshot() == before


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("automations: [", "YAML syntax error"),
        (
            DEFS.replace("agent_url:", "agent_uri:"),
            "automation 'Nightly report': agent_uri: unknown field",
        ),
        (DEFS.replace('"0 2 * * *"', '"0 99 * * *"'), "schedule #1: cron_expr: '0 99 * * *'"),
        (DEFS.replace("    steps:", "    max_retries: two\n    steps:"), "max_retries: must be"),
        (DEFS.replace("interval_s: 3600,", "interval_s: 3600, jitter_s: x,"), "#2: jitter_s"),
        (DEFS.replace("https://agent.example.com/run", "not a url"), "agent_url"),
        (DEFS.replace("    steps:", "\tsteps:"), "line 7, column 1"),
        (DEFS.replace("    steps:", "    name: Other\n    steps:"), "'name' is given twice"),
        (DEFS.replace("2030-01-01T00:00:00Z", "2030-01-01"), "#1: end_at: a date and time"),
        (DEFS.replace("gather, message:", "[1], message:"), "steps: a list of {name, message}"),
        (DEFS.replace('AGENT_TOKEN }}"', 'AGENT_TOKEN }}"\n      X-Empty: null'), "headers"),
        (DEFS.split("    schedules:")[0] + "    schedules: {kind: cron}\n", "schedules: a list"),
        (DEFS.replace("input:", "pause_note: why, input:"), "#2: pause_note: only with enabled"),
        (
            DEFS.replace("urgent", "x").replace(
                "    steps:", "    notifications: {channels: [ops]}\n    steps:"
            ),
            "no channel named 'ops'",
        ),
        (
            DEFS
            + DEFS.replace("automations:\n", "").replace("Nightly", "Daily").replace("3600", "x"),
            "'Daily report' schedule #2: interval_s",
        ),
        (
            DEFS + DEFS.replace("automations:\n", ""),
            "'Nightly report': name: given twice in the file",
        ),
    ],
)
def test_bad_file_writes_nothing_and_names_the_field(
    tmp_path: Path, capsys: Any, text: str, named: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and named in err and "Traceback" not in err
    assert table_snapshot() == before


# A schedule input of a few hundred bytes that expands to 9**9 values through aliases.
ALIAS_BOMB = DEFS.replace(
    "{kind: interval, interval_s: 3600, input: {region: eu}}",
    "kind: interval\n        interval_s: 3600\n        input:\n"
    + "          a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"          {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ),
)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (ALIAS_BOMB, "expands to more than"),
        ("automations: " + "[" * 50_000 + "]" * 50_000 + "\n", "nests deeper than"),
        (DEFS.replace("{region: eu}", "{deep: " + "[" * 5000 + "]" * 5000 + "}"), "nests deeper"),
    ],
    ids=["alias-bomb", "deep-file", "deep-input"],
)
def test_a_file_that_expands_or_nests_without_bound_is_refused_fast(
    tmp_path: Path, capsys: Any, text: str, said: str
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and said in err and "Traceback" not in err, err
    assert table_snapshot() == before


def test_an_alias_bomb_is_refused_while_reading_before_it_expands(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)

    tracemalloc.start()
    try:
        with pytest.raises(DefinitionError, match="expands to more than"):
            load(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Expanded, it took 22 s and 0.9 GB before the input's size check refused it.
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated while refusing it"


def test_export_then_apply_reproduces_the_definitions(
    tmp_path: Path, database_url: str, capsys: Any
) -> None:
    path, out = tmp_path / "in.yaml", tmp_path / "out.yaml"
    path.write_text(DEFS)
    assert cli("apply", "-f", str(path)) == 0
    assert cli("export-defs", "-o", str(out)) == 0
    exported = out.read_text()
    assert "{{ secret.AGENT_TOKEN }}" in exported and "signing" not in exported
    assert cli("apply", "-f", str(out)) == 0
    assert "no changes" in capsys.readouterr().out
    with session_scope() as s:  # an empty database: no definitions at all
        s.execute(Schedule.__table__.delete())
        s.execute(Automation.__table__.delete())
    assert cli("apply", "-f", str(out)) == 0
    again = tmp_path / "again.yaml"
    assert cli("export-defs", "-o", str(again)) == 0
    assert again.read_text() == exported


def test_every_field_round_trips_and_reapplies_as_no_change(tmp_path: Path, capsys: Any) -> None:
    make_channel("ops", "json://127.0.0.1:9/hook")
    path, out = tmp_path / "in.yaml", tmp_path / "out.yaml"
    path.write_text(FULL)
    assert cli("apply", "-f", str(path)) == 0
    assert cli("export-defs", "-o", str(out)) == 0
    exported = out.read_text()
    assert contains(yaml.safe_load(exported), yaml.safe_load(FULL))
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 0
    assert cli("apply", "-f", str(out)) == 0
    assert capsys.readouterr().out.endswith("no changes\nno changes\n")
    assert table_snapshot() == before
    with session_scope() as s:  # an empty database but for the workspace's channels
        for model in (NotifyRule, Schedule, Automation):
            s.execute(model.__table__.delete())
    assert cli("apply", "-f", str(out)) == 0
    assert cli("export-defs", "-o", str(out)) == 0
    assert out.read_text() == exported


def test_apply_acts_as_the_local_admin_and_is_audited(tmp_path: Path) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        audited = s.execute(select(AuditLog.actor, AuditLog.target_type)).all()
    assert sorted(audited) == [
        (LOCAL_ADMIN, "automation"),
        (LOCAL_ADMIN, "schedule"),
        (LOCAL_ADMIN, "schedule"),
    ]


def test_a_schedule_that_ended_by_itself_is_no_change(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS.replace("{kind: interval,", "{kind: once, run_at: 2020-01-01T00:00:00Z,"))
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        assert "its run time has passed" in set(s.scalars(select(Schedule.completed_reason)))
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 0
    assert capsys.readouterr().out.endswith("no changes\n")
    assert table_snapshot() == before


def test_apply_as_a_member_acts_in_their_workspace_with_their_role(
    tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    team = make_workspace(admin="lead@example.com")
    person("viewer@example.com", "viewer", team.workspace_id)
    before = table_snapshot()
    assert cli("apply", "-f", str(path), "--as", "viewer@example.com") == 2
    assert "a viewer may not create" in capsys.readouterr().err
    assert table_snapshot() == before
    args = ("--as", "lead@example.com", "--workspace", str(team.workspace_id))
    assert cli("apply", "-f", str(path), *args) == 0
    with session_scope() as s:
        assert set(s.scalars(select(Automation.workspace_id))) == {team.workspace_id}
        assert set(s.scalars(select(AuditLog.actor))) == {"lead@example.com"}
    assert cli("export-defs", *args) == 0
    assert "Nightly report" in capsys.readouterr().out
    assert cli("export-defs") == 0  # the local admin's workspace has none
    assert yaml.safe_load(capsys.readouterr().out) == {"automations": []}


def test_edited_schedules_are_updated_in_place_whatever_their_order(tmp_path: Path) -> None:
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        ids = {r.kind: r.id for r in s.execute(select(Schedule.kind, Schedule.id))}
    lines = DEFS.splitlines()  # both schedules edited, and listed the other way round
    cron, interval = lines[-2:]
    lines[-2:] = [interval.replace("3600", "7200"), cron.replace("0 2", "0 4")]
    path.write_text("\n".join(lines) + "\n")
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        rows = s.execute(
            select(Schedule.kind, Schedule.id, Schedule.cron_expr, Schedule.interval_s)
        )
        assert {r.kind: (r.id, r.cron_expr or r.interval_s) for r in rows} == {
            "cron": (ids["cron"], "0 4 * * *"),
            "interval": (ids["interval"], 7200),
        }


def test_a_name_two_automations_share_is_refused(tmp_path: Path, capsys: Any) -> None:
    make_automation(name="Nightly report")
    make_automation(name="Nightly report")
    path = tmp_path / "stepwise.yaml"
    path.write_text(DEFS)
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 2
    assert "two automations of the workspace have this name" in capsys.readouterr().err
    assert table_snapshot() == before


EVERY_MINUTE = """
automations:
  - name: Minutely check
    agent_url: https://agent.example.com/run
    steps: [{name: check, message: Check it}]
    schedules:
      - {kind: cron, cron_expr: "* * * * *"}
      - {kind: interval, interval_s: 30}
"""


def test_an_applied_schedule_due_within_the_minute_is_dispatched_without_the_tick(
    tmp_path: Path, redis_client: Any
) -> None:
    # given schedules whose first slots come due within the minute
    path = tmp_path / "stepwise.yaml"
    path.write_text(EVERY_MINUTE)
    # when the file is tried with --dry-run, then nothing is sent
    assert cli("apply", "-f", str(path), "--dry-run") == 0
    assert redis_client.llen("dramatiq:dispatch") == 0
    # when it is applied, then one dispatch waits in the broker's dispatch queue, as after
    # the same writes through the API: the scheduler's next tick is not awaited
    assert cli("apply", "-f", str(path)) == 0
    assert redis_client.llen("dramatiq:dispatch") == 1
    [sent] = [dramatiq.Message.decode(m) for m in redis_client.hvals("dramatiq:dispatch.msgs")]
    assert sent.actor_name == "dispatch"


def test_the_demo_automation_is_named_for_what_its_schedule_does() -> None:
    # given a first start, which seeds the demo automation and its schedule
    from service.definitions import seed_demo

    assert seed_demo("http://127.0.0.1:8787/agent")
    with session_scope() as session:
        automation = session.scalars(select(Automation)).one()
        cron_expr = session.scalars(select(Schedule.cron_expr)).one()
    # then its name says how often it runs, and the README calls it by that name
    assert cron_expr == "* * * * *"
    assert "every minute" in automation.name and "daily" not in automation.name
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f'"{automation.name}"' in readme


def test_the_readme_says_which_paths_are_at_the_root_and_which_need_a_token() -> None:
    from api.app import create_app

    paths = {getattr(route, "path", "") for route in create_app().routes}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    # /health is at the root, not under /v1, and the README no longer says otherwise
    assert "/health" in paths and "/v1/health" not in paths
    assert "all under `/v1`" not in readme
    assert (
        "`GET /health`, `GET /ready`, the docs (`/docs`) and `/openapi.json` are at the root"
        in readme
    )
    # and it says a loopback agent other than the demo is refused until it is allowed
    assert "refused, as a guard against requests to internal services, until its" in readme


def test_secret_origins_binds_a_secret_that_apply_then_respects(
    tmp_path: Path, capsys: Any
) -> None:
    from service import secrets

    # given a secret, bound from the command line by the local admin
    secrets.set_secret("AGENT_TOKEN", "tok-Lk52value", actor=person(LOCAL_ADMIN))
    assert cli("secret-origins", "AGENT_TOKEN", "https://agent.example.com/run") == 0
    assert "may be sent to https://agent.example.com/run" in capsys.readouterr().out
    # when definitions naming it are applied for another origin, then they are refused
    path = tmp_path / "defs.yaml"
    path.write_text(DEFS.replace("agent.example.com", "elsewhere.example.com"))
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) == 2
    assert "AGENT_TOKEN may not be sent to https://elsewhere.example.com:443" in (
        capsys.readouterr().err
    )
    assert table_snapshot() == before
    # and for the bound origin they apply
    path.write_text(DEFS)
    assert cli("apply", "-f", str(path)) == 0
    # and an unknown secret or a bad origin is refused, saying why
    assert cli("secret-origins", "NOPE", "https://agent.example.com") == 2
    assert cli("secret-origins", "AGENT_TOKEN", "ftp://x") == 2
    err = capsys.readouterr().err
    assert "no secret named NOPE" in err and "origins" in err


def _readme_graph() -> str:
    """The README's graph example (under "Workflow graphs"), as a definitions file."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Workflow graphs", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readme_graph_applies_and_round_trips_as_no_change(tmp_path: Path, capsys: Any) -> None:
    # given the README's graph: a root, two steps after it (one a fan-out, one with a
    # condition) and a join
    path, out = tmp_path / "graph.yaml", tmp_path / "out.yaml"
    path.write_text(_readme_graph())
    written = yaml.safe_load(path.read_text())["automations"][0]["steps"]
    assert [s["key"] for s in written] == ["plan", "read", "check", "brief"]
    assert any("for_each" in s for s in written) and any("when" in s for s in written)
    # when it is applied, then it is saved as a graph, in its plain form, as written
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        assert s.scalars(select(Automation.steps)).one() == written
    # and exported, the export writes the steps as written; applied again, nothing changes
    assert cli("export-defs", "-o", str(out)) == 0
    assert yaml.safe_load(out.read_text())["automations"][0]["steps"] == written
    capsys.readouterr()
    before = table_snapshot()
    assert cli("apply", "-f", str(out)) == 0
    assert cli("apply", "-f", str(path)) == 0
    assert capsys.readouterr().out.endswith("no changes\nno changes\n")
    assert table_snapshot() == before
    # and an edit of one step's field is that change, and only it
    edited = path.read_text().replace("timeout_s: 120", "timeout_s: 60")
    path.write_text(edited)
    assert cli("apply", "-f", str(path)) == 0
    with session_scope() as s:
        steps = s.scalars(select(Automation.steps)).one()
    assert steps[1]["timeout_s"] == 60 and steps[:1] + steps[2:] == written[:1] + written[2:]


def test_a_bad_graph_in_a_file_names_the_automation_and_the_step_and_writes_nothing(
    tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_readme_graph().replace("needs: [read]", "needs: [read, nowhere]", 1))
    before = table_snapshot()
    assert cli("apply", "-f", str(path)) != 0
    said = capsys.readouterr().err
    assert "automation 'Research brief'" in said
    assert "steps: step brief needs nowhere, which is not a step" in said
    assert table_snapshot() == before
