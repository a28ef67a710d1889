"""Who may do what: the permission table, pure (no server)."""

from __future__ import annotations

import uuid

import pytest

from core.access import PERMISSIONS, Actor, can, require
from core.errors import Forbidden
from core.secrets import SecretUnreadable, render_headers, secret_names
from core.vocabulary import Permission, Role


def test_roles_grow_viewer_editor_admin() -> None:
    assert PERMISSIONS[Role.VIEWER] == {Permission.READ}
    assert PERMISSIONS[Role.EDITOR] == {Permission.READ, Permission.EDIT, Permission.RUN}
    assert PERMISSIONS[Role.ADMIN] == set(Permission)
    assert PERMISSIONS[Role.VIEWER] < PERMISSIONS[Role.EDITOR] < PERMISSIONS[Role.ADMIN]


@pytest.mark.parametrize("permission", list(Permission))
def test_an_unknown_role_may_do_nothing(permission: Permission) -> None:
    assert not can("owner", permission)


def test_a_refusal_says_what_the_role_may_not_do() -> None:
    with pytest.raises(Forbidden, match="a viewer may not create, edit or delete"):
        require(Role.VIEWER, Permission.EDIT)
    with pytest.raises(Forbidden, match="an editor may not manage members"):
        require(Role.EDITOR, Permission.MANAGE_MEMBERS)
    require(Role.ADMIN, Permission.MANAGE_QUEUES)


def test_an_actor_is_known_by_its_lower_case_address() -> None:
    actor = Actor(name=" Alice@Example.COM ", workspace_id=uuid.uuid4(), role=Role.EDITOR)
    assert actor.subject == "alice@example.com"
    assert actor.can(Permission.RUN) and not actor.can(Permission.MANAGE_SECRETS)


def test_headers_reference_secrets_by_name() -> None:
    template = {"Authorization": "Bearer {{ secret.TOKEN }}", "X-Team": "{{secret.TEAM}}-1"}
    assert secret_names(template) == {"TOKEN", "TEAM"}
    rendered = render_headers(template, {"TOKEN": "t0k\\1", "TEAM": "blue", "OTHER": "x"})
    assert rendered == {"Authorization": "Bearer t0k\\1", "X-Team": "blue-1"}
    assert render_headers({"Accept": "json"}, {}) == {"Accept": "json"}
    with pytest.raises(SecretUnreadable, match="no workspace secret named TEAM") as refused:
        render_headers(template, {"TOKEN": "hidden-value"})
    assert "hidden-value" not in str(refused.value)
