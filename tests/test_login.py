"""Login with OpenID Connect, against a real local provider, in a real Chromium.

`oidc-provider-mock` runs as its own process (a complete OpenID Connect provider
whose login form takes the account's e-mail); the dashboard is the Procfile's
`stepwise web` with STEPWISE_OIDC_* set. Without login the web process refuses a
reachable address (tests/test_run_command.py); with it, it serves one.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from core.access import LOCAL_ADMIN
from core.errors import Forbidden
from core.vocabulary import Role
from db import workspaces as stored_workspaces
from db.session import session_scope
from service import automations, executions, workspaces
from stepwise.embedded import free_port
from testkit.browser import SHOTS, TALL, settle, window
from testkit.factories import (
    add_executions,
    make_automation,
    make_schedule,
    make_workspace,
    person,
    table_snapshot,
)
from testkit.processes import Processes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("db", "redis_client")]


@pytest.fixture
def provider(procs: Processes) -> str:
    port = free_port()
    # Alice and Bob's addresses are verified by the provider; any other account it makes up
    # on the spot (the login form's `sub`) has `email` = its sub, never said verified.
    verified = [
        json.dumps({"sub": email, "email": email, "email_verified": True})
        for email in ("alice@example.com", "bob@example.com")
    ]
    users = " ".join(f"--user-claims {shlex.quote(claims)}" for claims in verified)
    procs.start(
        "provider",
        command=f"{shlex.quote(sys.executable)} -m oidc_provider_mock --port {port} {users}",
    )
    issuer = f"http://127.0.0.1:{port}"
    procs.wait_http("provider", f"{issuer}/.well-known/openid-configuration")
    return issuer


def _account(provider: str, sub: str, **claims: object) -> None:
    """Make (or remake) the provider's account `sub` with exactly these claims."""
    httpx.put(f"{provider}/users/{quote(sub, safe='')}", json=claims).raise_for_status()


@pytest.fixture
def dashboard(procs: Processes, provider: str) -> str:
    port = free_port()
    procs.start(
        "web",
        PORT=str(port),
        STEPWISE_OIDC_ISSUER=provider,
        STEPWISE_OIDC_CLIENT_ID="stepwise",
        STEPWISE_OIDC_CLIENT_SECRET="client-secret",
        STEPWISE_ADMINS="alice@example.com",
    )
    url = f"http://localhost:{port}"
    procs.wait_http("web", f"{url}/_stcore/health")
    return url


def _log_in(page: Any, url: str, account: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Log in").click()
    page.locator("input[name=sub]").fill(account)  # the provider's own login form
    page.locator("form button[type=submit], form input[type=submit]").first.click()


def test_people_log_in_only_admins_enter_and_log_out(dashboard: str, chromium: Any) -> None:
    make_automation(name="Quarterly numbers")
    with window(chromium) as page:
        # given the dashboard with login: nothing but a login button before it
        page.goto(dashboard)
        page.get_by_role("button", name="Log in").wait_for()
        assert "Quarterly numbers" not in page.content()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "login.png"))
        # when an admin logs in through the provider, then the dashboard opens to her
        _log_in(page, dashboard, "alice@example.com")
        signed_in = page.get_by_text("Signed in as")
        signed_in.wait_for()
        assert signed_in.inner_text().replace("\u2060", "") == "Signed in as alice@example.com"
        page.goto(f"{dashboard}/automations")
        # A data grid draws on a canvas; its accessible copy fills in after it appears.
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.get_by_text("Quarterly numbers").first.wait_for(state="attached")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "signed_in.png"))
        # and logging out (here, and at the provider) closes it again
        page.get_by_role("button", name="Log out").click()
        page.get_by_role("button", name="End session").click()
        page.goto(dashboard)
        page.get_by_role("button", name="Log in").wait_for()
        page.goto(f"{dashboard}/automations")
        page.get_by_role("button", name="Log in").wait_for()
        assert "Quarterly numbers" not in page.content()
        # when someone the provider knows but who is not an admin logs in, nothing opens
        _log_in(page, dashboard, "mallory@example.com")
        page.get_by_text("has no access to this Stepwise").wait_for()
        page.goto(f"{dashboard}/automations")
        page.get_by_text("has no access to this Stepwise").wait_for()
        assert "Quarterly numbers" not in page.content()


@pytest.mark.timeout(900)  # six logins through the provider
def test_identity_is_the_providers_not_an_unverified_or_look_alike_claim(
    dashboard: str, provider: str, chromium: Any
) -> None:
    # given Alice (STEPWISE_ADMINS) who never logged in, and the local admin of the local
    # mode this deployment ran in before login was configured
    make_automation(name="Quarterly numbers")
    with session_scope() as session:
        stored_workspaces.bootstrap_admins(session, {LOCAL_ADMIN})
    # when accounts whose claims only look like hers (or like the local admin) log in
    _account(provider, "mallory", email="alice@example.com", email_verified=False)
    _account(provider, "eve", email="alice@example.com")  # never said verified
    _account(provider, "ALICE@EXAMPLE.COM")  # no e-mail: a sub that reads as hers
    _account(provider, "local admin")
    for account in ("mallory", "eve", "ALICE@EXAMPLE.COM", "local admin"):
        with window(chromium) as page:
            _log_in(page, dashboard, account)
            # then none of them is let in
            page.get_by_text("has no access to this Stepwise").wait_for()
            page.goto(f"{dashboard}/automations")
            page.get_by_text("has no access to this Stepwise").wait_for()
            assert "Quarterly numbers" not in page.content()
    # and the local admin's membership did not survive the switch to login
    with session_scope() as session:
        assert stored_workspaces.places(session, LOCAL_ADMIN) == []
    # when Alice logs in with her address verified, in capitals
    _account(provider, "alice-at-idp", email="ALICE@Example.com", email_verified=True)
    with window(chromium) as page:
        _log_in(page, dashboard, "alice-at-idp")
        signed_in = page.get_by_text("Signed in as")
        signed_in.wait_for()
        # then she is Alice, and the invitation is now bound to that identity
        assert signed_in.inner_text().replace("\u2060", "") == "Signed in as alice@example.com"
    # and another account given her verified address afterwards is not her
    _account(provider, "alice-twin", email="alice@example.com", email_verified=True)
    with window(chromium) as page:
        _log_in(page, dashboard, "alice-twin")
        page.get_by_text("has no access to this Stepwise").wait_for()


def test_with_login_the_dashboard_may_listen_beyond_loopback(
    procs: Processes, provider: str
) -> None:
    port = free_port()
    procs.start(
        "web",
        PORT=str(port),
        STEPWISE_WEB_ADDRESS="0.0.0.0",
        STEPWISE_OIDC_ISSUER=provider,
        STEPWISE_OIDC_CLIENT_ID="stepwise",
        STEPWISE_OIDC_CLIENT_SECRET="client-secret",
        STEPWISE_ADMINS="alice@example.com",
    )
    procs.wait_http("web", f"http://127.0.0.1:{port}/_stcore/health")


def test_the_login_secrets_are_never_written_to_a_file(
    procs: Processes, provider: str, tmp_path: Path
) -> None:
    # given the dashboard with login, with its own temporary folder
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    procs.start(
        "web",
        PORT=str(port),
        TMPDIR=str(temporary),
        STEPWISE_OIDC_ISSUER=provider,
        STEPWISE_OIDC_CLIENT_ID="stepwise",
        STEPWISE_OIDC_CLIENT_SECRET="client-secret",
        STEPWISE_ADMINS="alice@example.com",
    )
    url = f"http://localhost:{port}"
    procs.wait_http("web", f"{url}/_stcore/health")
    # when it serves, then no file holds the client secret, while it runs
    assert _holding("client-secret", temporary) == []
    # nor after a stop signal
    procs.stop_all()
    assert _holding("client-secret", temporary) == []


def _holding(secret: str, folder: Path) -> list[Path]:
    found = [
        p for p in folder.rglob("*") if p.is_file() and secret in p.read_text(errors="replace")
    ]
    return found + list(folder.glob("stepwise-login-*"))


def test_a_half_configured_login_names_what_is_missing() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "stepwise"), "web"],
        cwd=ROOT,
        env={**os.environ, "STEPWISE_OIDC_ISSUER": "http://127.0.0.1:1", "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "STEPWISE_OIDC_CLIENT_ID" in done.stderr and "STEPWISE_ADMINS" in done.stderr


def _grid_shows(page: Any, text: str) -> None:
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.get_by_text(text).first.wait_for(state="attached")


WRITE_CONTROLS = {
    "automations": ("Save", "Test run", "Delete", "New signing secret"),
    "schedules": ("New schedule", "Pause", "Resume", "Run now", "Edit", "Delete"),
    "executions": ("Retry", "Cancel"),
    "workspace": ("Add or change", "Remove", "Save secret", "Save quotas", "Create"),
}


def test_a_viewer_sees_no_write_controls_and_a_forged_write_is_refused(
    dashboard: str, chromium: Any
) -> None:
    # given an automation with a schedule and a failed run, and Bob, a viewer
    automation_id = make_automation(name="Quarterly numbers")
    make_schedule(automation_id)
    (failed,) = add_executions(automation_id, [{"status": "failed", "error": "agent said no"}])
    viewer = person("bob@example.com", Role.VIEWER)
    with window(chromium, viewport=TALL) as page:
        # when Bob logs in
        _log_in(page, dashboard, "bob@example.com")
        page.get_by_text("Your role here: viewer").wait_for()
        # then every page shows him the data and none of the controls that change it
        for path, marker in (
            ("automations", "Quarterly numbers"),
            ("schedules", "Quarterly numbers"),
            (f"executions?execution={failed}", "agent said no"),
            ("workspace", "bob@example.com"),
        ):
            page.goto(f"{dashboard}/{path}")
            settle(page)
            if path.startswith("executions"):
                page.get_by_text(marker).first.wait_for()
            else:
                _grid_shows(page, marker)
            main = page.locator('[data-testid="stMain"]')
            for label in WRITE_CONTROLS[path.split("?")[0]]:
                shown = main.get_by_role("button", name=label, exact=True).count()
                assert shown == 0, (path, label)
        page.screenshot(path=str(SHOTS / "viewer.png"), full_page=True)
    # and a write forged past the page, in his name, is refused by the server, writing nothing
    before = table_snapshot()
    for forged in (
        lambda s: executions.run_now(automation_id, actor=viewer),
        lambda s: executions.retry(failed, actor=viewer),
        lambda s: automations.delete(automation_id, actor=viewer),
        lambda s: workspaces.set_member("bob@example.com", Role.ADMIN, actor=viewer),
    ):
        with pytest.raises(Forbidden, match="a viewer may not"), session_scope() as session:
            forged(session)
    assert table_snapshot() == before


def test_a_member_of_two_workspaces_chooses_one_and_reaches_only_it(
    dashboard: str, chromium: Any
) -> None:
    # given Alice (admin of the default workspace, from STEPWISE_ADMINS) and another
    # team's workspace with a failed run
    make_automation(name="Our report")
    eve = make_workspace("Their team", admin="eve@their.example")
    theirs = make_automation(actor=eve, name="Their payroll")
    (their_run,) = add_executions(theirs, [{"status": "failed", "error": "their secret"}])
    with window(chromium, viewport=TALL) as page:
        _log_in(page, dashboard, "alice@example.com")
        page.get_by_text("Signed in as").wait_for()
        # when she follows a link to their run: it is not found, nothing of theirs shows
        page.goto(f"{dashboard}/executions?execution={their_run}")
        settle(page)
        assert "their secret" not in page.content() and "Their payroll" not in page.content()
        page.goto(f"{dashboard}/automations")
        _grid_shows(page, "Our report")
        assert "Their payroll" not in page.content()
        # an admin here, she has the write controls (the viewer test's counterpart)
        assert page.get_by_role("button", name="Save", exact=True).count() == 1
        # when Eve makes her a viewer of their team, a workspace chooser appears
        workspaces.set_member("alice@example.com", Role.VIEWER, actor=eve)
        page.goto(f"{dashboard}/automations")
        settle(page)
        chooser = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
        chooser.click()
        page.get_by_role("option", name="Their team (viewer)").click()
        settle(page)
        # then in their workspace she reads theirs, not ours, and cannot change it
        _grid_shows(page, "Their payroll")
        assert "Our report" not in page.content()
        assert page.get_by_role("button", name="Save", exact=True).count() == 0
        page.get_by_text("Your role here: viewer").wait_for()
