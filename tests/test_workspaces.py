"""Workspaces and roles in the database: every read and write scoped, every role checked.

Two workspaces side by side on a real PostgreSQL (and Redis for the queue actions):
the default one, where the factories' ADMIN acts, and another team's. A member of
one reaches nothing of the other by any query, command, export or queue action; a
viewer's forged write raises Forbidden and writes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.access import DEFAULT_WORKSPACE_ID, LOCAL_ADMIN, Actor, Login
from core.errors import Forbidden, InvalidState, NotFound, QuotaExceeded, ValidationFailed
from core.schedule import ScheduleInput
from core.secrets import SecretUnreadable
from core.settings import get_settings
from core.timing import ScheduleSpec
from core.vocabulary import AuditAction, Role
from db import automations as stored_automations
from db import executions as stored_executions
from db import figures, queries, secrets, workspaces
from db import schedules as stored_schedules
from db.audit import AuditFilters, list_audit
from db.claims import claim_execution
from db.dispatch import DispatchConfig, dispatch_batch
from db.models import Execution, Membership, WorkspaceSecret
from db.queries import ExecutionFilters
from db.session import session_scope
from service import acting, admin, automations, executions, exports, schedules
from service import secrets as secret_service
from service import workspaces as workspace_service
from testkit.cli import cli
from testkit.factories import (
    ADMIN,
    add_executions,
    automation_input,
    make_automation,
    make_execution,
    make_schedule,
    make_workspace,
    now,
    person,
    schedule_definition,
    table_snapshot,
)

pytestmark = pytest.mark.usefixtures("db")


@dataclass(frozen=True)
class Team:
    """A workspace with one of everything: automation, schedule, runs of each kind."""

    admin: Actor
    automation: uuid.UUID
    schedule: uuid.UUID
    queued: uuid.UUID
    failed: uuid.UUID


def _team(admin: Actor, name: str) -> Team:
    automation = make_automation(actor=admin, name=name)
    schedule = make_schedule(automation, actor=admin, cron_expr="0 9 * * *")
    queued = make_execution(automation, actor=admin)
    [failed] = add_executions(automation, [{"status": "failed", "error": f"{name} broke"}])
    return Team(admin, automation, schedule, queued, failed)


@pytest.fixture
def ours() -> Team:
    return _team(ADMIN, "Ours")


@pytest.fixture
def theirs() -> Team:
    return _team(make_workspace("Their team", admin="eve@their.example"), "Theirs")


def _read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with session_scope() as session:
        return fn(session, *args, **kwargs)


def _refused(
    write: Callable[[Session], Any], error: type[Exception] = NotFound, match: str | None = None
) -> None:
    """`write` raises `error` and leaves every table as it was."""
    before = table_snapshot()
    with pytest.raises(error, match=match), session_scope() as session:
        write(session)
    assert table_snapshot() == before


# --- reads --------------------------------------------------------------------------


def test_no_read_shows_another_workspace(ours: Team, theirs: Team, tmp_path: Path) -> None:
    # given two workspaces with one of everything; when the first one's admin reads
    a = ADMIN
    since = now() - timedelta(days=7)
    # then every list, figure and export holds only their own
    assert [r.name for r in _read(queries.list_automations, actor=a)] == ["Ours"]
    assert list(_read(queries.automation_names, actor=a).values()) == ["Ours"]
    assert [r.id for r in _read(queries.list_schedules, actor=a)] == [ours.schedule]
    assert list(_read(queries.schedule_labels, actor=a)) == [ours.schedule]
    assert _read(queries.get_schedule_row, theirs.schedule, actor=a) is None
    page = _read(queries.list_executions, ExecutionFilters(), actor=a)
    assert {r.id for r in page.rows} == {ours.queued, ours.failed}
    assert _read(queries.count_executions, ExecutionFilters(), actor=a) == 2
    # a filter naming their automation or schedule finds nothing
    foreign = ExecutionFilters(automation_id=theirs.automation)
    assert _read(queries.count_executions, foreign, actor=a) == 0
    assert (
        _read(queries.count_executions, ExecutionFilters(schedule_id=theirs.schedule), actor=a) == 0
    )
    # deep links: their run's detail reads as missing
    assert _read(queries.execution_detail, theirs.failed, actor=a) is None
    assert _read(queries.execution_detail, ours.failed, actor=a) is not None
    assert [r.id for r in _read(queries.recent_failures, actor=a)] == [ours.failed]
    assert _read(queries.executions_in_workspace, {ours.queued, theirs.queued}, actor=a) == {
        ours.queued
    }
    # figures and charts
    kpis = _read(figures.kpis, actor=a)
    assert (kpis.active_schedules, kpis.failures_24h, kpis.open_runs) == (1, 1, 1)
    series = _read(figures.outcome_series, actor=a, since=since, until=since + timedelta(days=8))
    assert sum(p.count for p in series) == 1
    assert [u.automation_name for u in _read(figures.upcoming_runs, actor=a)] == ["Ours"]
    add_executions(ours.automation, [{"schedule_id": ours.schedule, "status": "succeeded"}])
    add_executions(theirs.automation, [{"schedule_id": theirs.schedule, "status": "succeeded"}])
    stats = _read(figures.schedule_stats, actor=a, since=since)
    assert [s.schedule_id for s in stats] == [ours.schedule]
    # exports
    frame = _read(exports.history_frame, actor=a)
    assert set(frame["automation"]) == {"Ours"} and len(frame) == 3
    out = tmp_path / "runs.csv"
    assert _read(exports.write_history, ExecutionFilters(), out, "csv", actor=a) == 3
    assert "Theirs" not in out.read_text()
    # audit and members
    assert {r.actor for r in _read(list_audit, AuditFilters(), actor=a)} == {"test"}
    assert [m.subject for m in _read(workspaces.list_members, actor=a)] == ["test"]


def test_an_actor_naming_a_workspace_it_is_not_in_reads_nothing(theirs: Team) -> None:
    # given ADMIN, who is not a member of their workspace, pretending to act in it
    forged = Actor(name=ADMIN.name, workspace_id=theirs.admin.workspace_id, role=Role.ADMIN)
    # then every read refuses
    for read in (
        lambda s: queries.list_automations(s, actor=forged),
        lambda s: queries.list_executions(s, ExecutionFilters(), actor=forged),
        lambda s: queries.execution_detail(s, theirs.failed, actor=forged),
        lambda s: figures.kpis(s, actor=forged),
        lambda s: exports.history_frame(s, actor=forged),
        lambda s: list_audit(s, AuditFilters(), actor=forged),
        lambda s: secrets.list_secrets(s, actor=forged),
    ):
        with pytest.raises(Forbidden, match="not a member"), session_scope() as session:
            read(session)
    # and so does every write
    _refused(
        lambda s: automations.create(automation_input(), actor=forged),
        Forbidden,
        "not a member",
    )
    _refused(lambda s: executions.cancel(theirs.queued, actor=forged), Forbidden)


# --- writes ------------------------------------------------------------------------


def test_no_command_reaches_another_workspace(ours: Team, theirs: Team) -> None:
    # given their objects; when our admin acts on their ids, each one "does not exist"
    a = ADMIN
    good = schedule_definition(ScheduleInput(spec=ScheduleSpec(kind="cron", cron_expr="* * * * *")))
    for write in (
        lambda s: stored_automations.get_automation(s, theirs.automation, actor=a),
        lambda s: automations.update(theirs.automation, automation_input(), actor=a),
        lambda s: automations.delete(theirs.automation, actor=a),
        lambda s: automations.rotate_signing_secret(theirs.automation, actor=a),
        lambda s: automations.signing_secret(theirs.automation, actor=a),
        lambda s: schedules.create(theirs.automation, good, actor=a),
        lambda s: stored_schedules.get_schedule(s, theirs.schedule, actor=a),
        lambda s: schedules.update(theirs.schedule, good, actor=a),
        lambda s: schedules.pause(theirs.schedule, actor=a),
        lambda s: schedules.delete(theirs.schedule, actor=a),
        lambda s: executions.run_now(theirs.automation, actor=a),
        lambda s: stored_executions.get_execution(s, theirs.queued, actor=a),
        lambda s: executions.cancel(theirs.queued, actor=a),
        lambda s: executions.retry(theirs.failed, actor=a),
    ):
        # then it is refused and nothing is written
        _refused(write, NotFound, "does not exist")
    # while the same commands work on our own
    executions.cancel(ours.queued, actor=a)


@pytest.mark.parametrize("role", [Role.VIEWER])
def test_a_viewers_forged_write_is_refused_and_writes_nothing(ours: Team, role: Role) -> None:
    # given a viewer of our workspace, calling the commands the page hides from them
    viewer = person("vera@example.com", role)
    good = schedule_definition(ScheduleInput(spec=ScheduleSpec(kind="cron", cron_expr="* * * * *")))
    for write in (
        lambda s: automations.create(automation_input(), actor=viewer),
        lambda s: automations.update(ours.automation, automation_input(), actor=viewer),
        lambda s: automations.delete(ours.automation, actor=viewer),
        lambda s: automations.rotate_signing_secret(ours.automation, actor=viewer),
        lambda s: automations.signing_secret(ours.automation, actor=viewer),
        lambda s: schedules.create(ours.automation, good, actor=viewer),
        lambda s: schedules.update(ours.schedule, good, actor=viewer),
        lambda s: schedules.pause(ours.schedule, actor=viewer),
        lambda s: schedules.delete(ours.schedule, actor=viewer),
        lambda s: executions.run_now(ours.automation, actor=viewer),
        lambda s: executions.cancel(ours.queued, actor=viewer),
        lambda s: executions.retry(ours.failed, actor=viewer),
        lambda s: workspace_service.set_member("vera@example.com", Role.ADMIN, actor=viewer),
        lambda s: workspace_service.remove_member("test", actor=viewer),
        lambda s: workspace_service.create_workspace("Mine now", actor=viewer),
        lambda s: workspace_service.set_quotas(workspaces.Quotas(9, 9, 9), actor=viewer),
        lambda s: secret_service.set_secret("TOKEN", "x", actor=viewer),
    ):
        # then each one raises a clear error and nothing is written
        _refused(write, Forbidden, "a viewer may not")
    # and the role claimed in the Actor does not matter: it is read from the membership
    claims_admin = Actor(name=viewer.name, workspace_id=viewer.workspace_id, role=Role.ADMIN)
    _refused(lambda s: automations.delete(ours.automation, actor=claims_admin), Forbidden)
    # while reading is what a viewer does
    assert [r.name for r in _read(queries.list_automations, actor=viewer)] == ["Ours"]


def test_an_editor_edits_and_runs_but_manages_nothing(ours: Team) -> None:
    editor = person("ed@example.com", Role.EDITOR)
    executions.run_now(ours.automation, actor=editor)
    schedules.pause(ours.schedule, actor=editor)
    _refused(
        lambda s: workspace_service.set_member("x@example.com", "viewer", actor=editor), Forbidden
    )
    _refused(lambda s: secret_service.set_secret("TOKEN", "x", actor=editor), Forbidden)


def test_a_removed_member_loses_access_at_their_next_call(ours: Team) -> None:
    # given an editor, acting
    editor = person("ed@example.com", Role.EDITOR)
    assert _read(queries.count_executions, ExecutionFilters(), actor=editor) == 2
    # when an admin removes them
    workspace_service.remove_member("ED@example.com", actor=ADMIN)
    # then the Actor they still hold grants nothing
    with pytest.raises(Forbidden, match="not a member"), session_scope() as session:
        queries.count_executions(session, ExecutionFilters(), actor=editor)
    _refused(lambda s: executions.run_now(ours.automation, actor=editor), Forbidden)


# --- members ---------------------------------------------------------------------------


def test_admins_add_change_and_remove_members_audited() -> None:
    workspace_service.set_member("Bob@Example.com", Role.VIEWER, actor=ADMIN)
    workspace_service.set_member("bob@example.com", Role.EDITOR, actor=ADMIN)
    workspace_service.set_member("bob@example.com", Role.EDITOR, actor=ADMIN)  # no change
    workspace_service.remove_member("bob@example.com", actor=ADMIN)
    rows = _read(list_audit, AuditFilters(), actor=ADMIN)
    assert [(r.action, r.details.get("member"), r.actor) for r in reversed(rows)] == [
        (AuditAction.ADD_MEMBER, "bob@example.com", "test"),
        (AuditAction.SET_ROLE, "bob@example.com", "test"),
        (AuditAction.REMOVE_MEMBER, "bob@example.com", "test"),
    ]
    assert rows[1].details["changed"] == {"role": ["viewer", "editor"]}
    assert rows[0].target_id == DEFAULT_WORKSPACE_ID


def test_the_last_admin_stays_and_bad_input_is_refused() -> None:
    _refused(
        lambda s: workspace_service.remove_member("test", actor=ADMIN), InvalidState, "one admin"
    )
    _refused(
        lambda s: workspace_service.set_member("test", Role.VIEWER, actor=ADMIN),
        InvalidState,
        "admin",
    )
    _refused(lambda s: workspace_service.set_member("", Role.VIEWER, actor=ADMIN), ValidationFailed)
    _refused(
        lambda s: workspace_service.set_member("x@y.z", "owner", actor=ADMIN), ValidationFailed
    )
    _refused(lambda s: workspace_service.remove_member("nobody@x.y", actor=ADMIN), NotFound)


def test_a_new_workspace_has_its_creator_as_admin_and_nothing_else() -> None:
    there = workspace_service.create_workspace(" Research ", actor=ADMIN)
    assert _read(queries.list_automations, actor=there) == []
    places = _read(workspaces.places, "test")
    assert [(p.name, p.role) for p in places] == [("Default", "admin"), ("Research", "admin")]
    assert _read(workspaces.acting_as, "test", there.workspace_id) == there
    assert _read(workspaces.acting_as, "stranger@x.y") is None


# --- bootstrap from the environment ----------------------------------------------------------


def test_admins_from_the_environment_bootstrap_the_default_workspace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given STEPWISE_ADMINS, on a database with no workspace at all
    with session_scope() as session:
        session.execute(text("TRUNCATE workspaces CASCADE"))
    monkeypatch.setenv("STEPWISE_ADMINS", "Alice@Example.com, root@example.com")
    get_settings.cache_clear()
    try:
        # when they are bootstrapped (the dashboard does it at each person's first page)
        with session_scope() as session:
            workspaces.bootstrap_admins(session, get_settings().admin_emails())
            # one was demoted meanwhile; bootstrapping again makes them admin again
            session.flush()
            session.execute(
                Membership.__table__.update()
                .where(Membership.subject == "root@example.com")
                .values(role="viewer")
            )
            workspaces.bootstrap_admins(session, get_settings().admin_emails())
    finally:
        get_settings.cache_clear()
    # then the default workspace exists with both as admins, and nobody else is in
    for name in ("alice@example.com", "ROOT@example.com"):
        [place] = _read(workspaces.places, name)
        assert (place.workspace_id, place.name, place.role) == (
            DEFAULT_WORKSPACE_ID,
            "Default",
            "admin",
        )
    assert _read(workspaces.places, "mallory@example.com") == []


def test_local_mode_is_one_admin_in_one_default_workspace() -> None:
    with session_scope() as session:
        session.execute(text("TRUNCATE workspaces CASCADE"))
        workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    local = _read(workspaces.acting_as, LOCAL_ADMIN)
    assert local == Actor(LOCAL_ADMIN, DEFAULT_WORKSPACE_ID, Role.ADMIN)
    automation = make_automation(actor=local)
    assert [r.id for r in _read(queries.list_automations, actor=local)] == [automation]


# --- login: who a provider identity is ----------------------------------------------------------

ISSUER = "http://127.0.0.1:9/"  # only a name here: the browser test uses the real provider


def _login(sub: str, **claims: object) -> Login:
    return Login.from_claims({"sub": sub, **claims}, issuer=ISSUER)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "mallory", "email": "alice@example.com", "email_verified": False},
        {"sub": "mallory", "email": "alice@example.com"},  # never said verified
        {"sub": "mallory", "email": "alice@example.com", "email_verified": "false"},
        {"sub": "alice@example.com"},
        {"sub": "ALICE@EXAMPLE.COM"},
        {"sub": LOCAL_ADMIN},
        {"sub": "mallory", "email": LOCAL_ADMIN, "email_verified": True},
        {"sub": "mallory", "email": " alice@example.com x", "email_verified": True},
    ],
)
def test_an_unverified_or_missing_email_matches_no_member(claims: dict[str, object]) -> None:
    # given Alice, an invited admin who never logged in, and the local admin of local mode
    workspace_service.set_member("alice@example.com", Role.ADMIN, actor=ADMIN)
    with session_scope() as session:
        workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    # when a provider identity whose claims only look like hers signs in
    login = Login.from_claims(claims, issuer=ISSUER)
    # then it is nobody here, and her invitation stays open for her
    assert workspace_service.sign_in(login, admins=set()) is None
    with session_scope() as session:
        bound = session.scalars(select(Membership.login_subject)).all()
    assert set(bound) == {None}


def test_a_verified_email_accepts_the_invitation_for_that_identity_only() -> None:
    workspace_service.set_member("alice@example.com", Role.ADMIN, actor=ADMIN)
    # when Alice signs in with her verified address (in any case)
    alice = _login("alice-1", email="Alice@Example.COM", email_verified=True)
    assert workspace_service.sign_in(alice) == "alice@example.com"
    # then her identity is bound: she is Alice from now on, whatever e-mail comes next
    assert workspace_service.sign_in(_login("alice-1")) == "alice@example.com"
    # and another account the provider also gives her verified address is not her
    twin = _login("alice-2", email="alice@example.com", email_verified=True)
    assert workspace_service.sign_in(twin) is None
    # nor the same subject from another issuer
    other = Login(issuer="http://elsewhere.example", subject="alice-1", email=None)
    assert workspace_service.sign_in(other) is None
    # and a later invitation of hers, elsewhere, is hers too at her next login
    theirs = make_workspace("Their team", admin="eve@their.example")
    workspace_service.set_member("alice@example.com", Role.VIEWER, actor=theirs)
    assert workspace_service.sign_in(alice) == "alice@example.com"
    assert len(_read(workspaces.places, "alice@example.com")) == 2
    assert workspace_service.sign_in(twin) is None


def test_a_provider_that_never_sends_email_verified_can_be_trusted_by_setting() -> None:
    claims = {"sub": "alice-1", "email": "alice@example.com"}
    trusting = Login.from_claims(claims, issuer=ISSUER, email_always_verified=True)
    assert trusting.email == "alice@example.com"
    # an explicit "not verified" is never trusted
    refused = {**claims, "email_verified": False}
    assert Login.from_claims(refused, issuer=ISSUER, email_always_verified=True).email is None
    assert get_settings().oidc_email_always_verified is False  # off unless set


def test_with_login_the_local_admin_is_dropped_and_the_cli_needs_as(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given the local admin of a deployment that ran in local mode
    with session_scope() as session:
        workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    monkeypatch.setenv("STEPWISE_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("STEPWISE_OIDC_CLIENT_ID", "stepwise")
    monkeypatch.setenv("STEPWISE_OIDC_CLIENT_SECRET", "secret")
    monkeypatch.setenv("STEPWISE_ADMINS", "alice@example.com")
    get_settings.cache_clear()
    try:
        # when the dashboard with login bootstraps its admins
        workspace_service.sign_in(_login("x"), admins=get_settings().admin_emails())
        assert _read(workspaces.places, LOCAL_ADMIN) == []
        # then a command without --as is refused and makes no local admin again
        defs = tmp_path / "defs.yaml"
        defs.write_text("automations: []\n")
        before = table_snapshot()
        assert cli("apply", "-f", str(defs)) == 2
        assert cli("export-defs") == 2
        assert table_snapshot() == before
        with pytest.raises(Forbidden, match="--as"):
            acting.member(None)
        # and with --as, a member acts
        assert cli("export-defs", "--as", ADMIN.name) == 0
    finally:
        get_settings.cache_clear()
    assert _read(workspaces.places, LOCAL_ADMIN) == []


# --- quotas ---------------------------------------------------------------------------------


def test_quotas_refuse_at_create_time_with_a_clear_error(ours: Team) -> None:
    # given quotas at what the workspace already has (1 automation, 1 schedule, 2 runs)
    workspace_service.set_quotas(workspaces.Quotas(1, 1, 2), actor=ADMIN)
    good = schedule_definition(ScheduleInput(spec=ScheduleSpec(kind="cron", cron_expr="* * * * *")))
    # then one more of each is refused and nothing is written
    _refused(
        lambda s: automations.create(automation_input(), actor=ADMIN),
        QuotaExceeded,
        "quota of 1 automations",
    )
    _refused(
        lambda s: schedules.create(ours.automation, good, actor=ADMIN),
        QuotaExceeded,
        "quota of 1 schedules",
    )
    _refused(
        lambda s: executions.run_now(ours.automation, actor=ADMIN),
        QuotaExceeded,
        "2 runs per minute",
    )
    # and the change was audited, old and new
    [row] = _read(list_audit, AuditFilters(actions=(AuditAction.SET_QUOTA,)), actor=ADMIN)
    assert row.details["changed"]["max_automations"] == [200, 1]
    # and another workspace keeps its own limits
    theirs = make_workspace()
    make_automation(actor=theirs)
    assert _read(workspaces.workspace_quotas, actor=theirs).max_automations == 200


# --- secrets -----------------------------------------------------------------------------------


def test_secrets_are_sealed_write_only_and_audited_by_name(theirs: Team) -> None:
    # given a secret set by an admin, then replaced
    agent = "https://agent.example.com/run"
    secret_service.set_secret("AGENT_TOKEN", "first-value-123", actor=ADMIN, origins=[agent])
    secret_service.set_secret("AGENT_TOKEN", "second-value-456", actor=ADMIN)
    secret_service.set_secret("AGENT_TOKEN", "their-value-789", actor=theirs.admin, origins=[agent])
    # then only names can be read back; the table holds no clear value
    assert [s.name for s in _read(secrets.list_secrets, actor=ADMIN)] == ["AGENT_TOKEN"]
    stored = _read(lambda s: s.scalars(select(WorkspaceSecret.sealed)).all())
    assert all("value" not in v for v in stored)
    rows = _read(list_audit, AuditFilters(), actor=ADMIN)
    assert [r.details for r in rows] == [
        {"name": "AGENT_TOKEN", "replaced": True},
        {"name": "AGENT_TOKEN", "replaced": False, "origins": ["https://agent.example.com:443"]},
    ]
    assert "value" not in repr(rows)
    # and the worker's resolution uses the run's workspace's value only
    template = {"Authorization": "Bearer {{ secret.AGENT_TOKEN }}", "Accept": "json"}
    ours_resolved = _read(secrets.resolve_headers, DEFAULT_WORKSPACE_ID, template, agent)
    assert ours_resolved == {"Authorization": "Bearer second-value-456", "Accept": "json"}
    theirs_resolved = _read(secrets.resolve_headers, theirs.admin.workspace_id, template, agent)
    assert theirs_resolved["Authorization"] == "Bearer their-value-789"
    with pytest.raises(SecretUnreadable, match="no workspace secret named MISSING"):
        _read(secrets.resolve_headers, DEFAULT_WORKSPACE_ID, {"X": "{{ secret.MISSING }}"}, agent)
    # and a secret is never opened for an origin it is not bound to
    with pytest.raises(SecretUnreadable, match="AGENT_TOKEN may not be sent to"):
        _read(secrets.resolve_headers, DEFAULT_WORKSPACE_ID, template, "https://evil.example/")
    # and deleting is audited by name too; bad names are refused
    secret_service.delete_secret("AGENT_TOKEN", actor=ADMIN)
    _refused(lambda s: secret_service.delete_secret("AGENT_TOKEN", actor=ADMIN), NotFound)
    _refused(lambda s: secret_service.set_secret("bad name", "v", actor=ADMIN), ValidationFailed)
    _refused(lambda s: secret_service.set_secret("EMPTY", "", actor=ADMIN), ValidationFailed)


def test_reseal_covers_workspace_secrets() -> None:
    agent = "https://agent.example.com/run"
    secret_service.set_secret("TOKEN", "v", actor=ADMIN, origins=[agent])
    assert admin.reseal() == 1
    template = {"A": "{{ secret.TOKEN }}"}
    assert _read(secrets.resolve_headers, DEFAULT_WORKSPACE_ID, template, agent) == {"A": "v"}


# --- workers --------------------------------------------------------------------------------


def test_workers_act_for_the_runs_workspace(theirs: Team) -> None:
    # given their interval schedule; when the dispatcher reaches its first slot
    schedule_id = make_schedule(
        theirs.automation, actor=theirs.admin, kind="interval", interval_s=60
    )
    with session_scope() as session:
        start = stored_schedules.get_schedule(session, schedule_id, actor=theirs.admin).next_run_at
    config = DispatchConfig(horizon_s=90, grace_s=60, batch=100)
    with session_scope() as session:
        message, *_ = dispatch_batch(session, now=start, config=config)[0]
    with session_scope() as session:
        dispatched = session.get(Execution, message.execution_id)
        assert dispatched is not None
        # then the run is in their workspace, and the worker's claim says so
        assert dispatched.workspace_id == theirs.admin.workspace_id
        claim = claim_execution(session, theirs.queued, lease_s=5)
        assert not isinstance(claim, str) and claim.workspace_id == theirs.admin.workspace_id


# --- queue actions ----------------------------------------------------------------------------


def test_queue_actions_are_admin_only_scoped_and_audited(
    ours: Team, theirs: Team, redis_client: Any
) -> None:
    from service import queues as workspace_queues
    from tasks.actors import dispatch, run_execution

    def bury(message_id: str, message: Any) -> None:
        # Dead now: Dramatiq drops dead letters older than a week at its maintenance.
        redis_client.zadd("dramatiq:default.XQ", {message_id: time.time() * 1000})
        redis_client.hset("dramatiq:default.XQ.msgs", message_id, message.encode())

    # given dead letters of our failed run, of theirs, and of the scheduler's own tick
    bury("ours", run_execution.message(str(ours.failed)))
    bury("theirs", run_execution.message(str(theirs.failed)))
    bury("tick", dispatch.message())
    # then each admin sees their own run's and the tick, never the other's
    seen = {m.message_id for m in workspace_queues.dead_letters("default", actor=ADMIN)}
    assert seen == {"ours", "tick"}
    assert {m.message_id for m in workspace_queues.dead_letters("default", actor=theirs.admin)} == {
        "theirs",
        "tick",
    }
    # and a viewer or an editor may look but not act
    for role in (Role.VIEWER, Role.EDITOR):
        member = person(f"{role}@example.com", role)
        with pytest.raises(Forbidden, match="may not retry or purge"):
            workspace_queues.retry_dead_letter("default", "ours", actor=member)
        with pytest.raises(Forbidden, match="may not retry or purge"):
            workspace_queues.purge_dead_letters("default", actor=member)
    # when our admin tries their letter, by its id: nothing happens
    assert not workspace_queues.retry_dead_letter("default", "theirs", actor=ADMIN)
    # when our admin retries ours: our run is re-opened and sent
    assert workspace_queues.retry_dead_letter("default", "ours", actor=ADMIN)
    assert _read(stored_executions.get_execution, ours.failed, actor=ADMIN).status == "queued"
    # when our admin purges: the tick goes, their letter stays
    assert workspace_queues.purge_dead_letters("default", actor=ADMIN) == 1
    assert redis_client.zrange("dramatiq:default.XQ", 0, -1) == [b"theirs"]
    # then both actions are in our audit, with the actor, and nothing in theirs
    rows = _read(list_audit, AuditFilters(), actor=ADMIN)
    audited = [(r.action, r.actor, r.target_type, r.details.get("queue")) for r in rows[:2]]
    assert audited == [
        (AuditAction.PURGE_DEAD_LETTERS, "test", "queue", "default"),
        (AuditAction.RETRY_DEAD_LETTER, "test", "execution", "default"),
    ]
    assert rows[1].target_id == ours.failed
    their_rows = _read(list_audit, AuditFilters(), actor=theirs.admin)
    assert not [r for r in their_rows if "dead_letter" in r.action]
