"""The REST API fuzzed by schemathesis against the OpenAPI schema it serves, with a token.

Every operation gets a few generated requests (valid and invalid): none may answer
5xx, every answer must match the schema (status, content type, body), every
error must be problem+json, and a refused request must write nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.vocabulary import ExecutionStatus, Role
from db import tokens
from db.session import session_scope
from testkit.factories import ADMIN, add_runs, make_automation, make_schedule, row_counts

PROBLEM = "application/problem+json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def auth(db: None) -> dict[str, str]:
    """An admin token, and something in the workspace for it to find."""
    automation_id = make_automation()
    make_schedule(automation_id)
    add_runs(automation_id, [{"status": ExecutionStatus.FAILED}])
    with session_scope() as session:
        token = tokens.create_token(session, "fuzz", Role.ADMIN, actor=ADMIN).token
    return {"Authorization": f"Bearer {token}"}


def _fuzz(case: Any, auth: dict[str, str]) -> None:
    before = row_counts()
    response = case.call(headers=dict(auth))
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert response.headers["content-type"] == [PROBLEM], response.text
        assert row_counts() == before, f"{case.method} {case.path} wrote rows and answered an error"


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_its_schema_under_generated_input(
    redis_client: Any, auth: dict[str, str], mode: GenerationMode
) -> None:
    # given the schema the API serves
    from api.app import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    # when each operation gets a few generated requests, with an admin token
    for operation in operations:
        # then each answer keeps to the schema, errors are problem+json and write nothing
        check = settings(
            max_examples=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy(generation_mode=mode))(_fuzz))
        try:
            check(auth=auth)
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE
