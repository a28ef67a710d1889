"""Test support is written once: a helper lives in `testkit/` or `tests/conftest.py`, and no
test module defines it again, under its name or another.

Read from the source (no server): every module-level function and fixture of the test
modules, `tests/conftest.py` and `testkit/`, and the body of every function there.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = sorted([*ROOT.glob("tests/*.py"), *ROOT.glob("testkit/*.py")])

# Names that two test modules each give to a different thing of their own (compared
# without leading underscores). A name here must still be defined twice.
ALLOWED = {
    "history": "the runs that one module's page tests read, a fixture per module",
    "small_batches": "a fixture shrinking the one batch setting its module's code reads",
    "age": "moving history into the past (test_faults_input) / lapsing a lease (recovery)",
    "call": "one agent call (test_agent) / calls through an egress policy (test_egress)",
    "executions": "slots and statuses of a schedule (test_db) / every row (test_webhooks)",
    "keys": "stored Idempotency-Keys (test_api_limits) / an agent's (test_faults_workers)",
    "refused": "a run input's error (test_run_input) / a refused write (test_workspaces)",
    "schema": "the API's OpenAPI schema (test_api_schema) / a database's (test_db)",
    "ours": "our workspace's objects by id (test_api) / our team, a fixture (test_workspaces)",
    "schedules": "the chaos run's schedules (test_chaos) / the listed rows (test_dashboard)",
    "utc": "an instant from its parts (testkit.timing) / from text (test_faults_clock)",
    "create_database": "testkit.servers' function and the conftest fixture built on it",
}


def _module_functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _all_functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _body(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's statements, without its docstring, as a comparable text ("" for a
    body that does nothing, as an override that silences a log)."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if all(isinstance(statement, ast.Pass) for statement in body):
        return ""
    return "\n".join(ast.dump(statement) for statement in body)


def _defined_where() -> dict[str, set[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for path in SUPPORT:
        for function in _module_functions(path):
            if not function.name.startswith("test_"):
                where[function.name.lstrip("_")].add(str(path.relative_to(ROOT)))
    return where


def test_no_helper_or_fixture_is_defined_in_two_modules() -> None:
    # given every helper and fixture of tests/ and testkit/, by name
    where = _defined_where()
    # then each is defined in one module only, but for the few names listed as local
    twice = {name: sorted(places) for name, places in where.items() if len(places) > 1}
    assert {name: places for name, places in twice.items() if name not in ALLOWED} == {}
    # and the list names only what is still defined twice
    assert sorted(name for name in ALLOWED if name not in twice) == []


def test_no_function_repeats_the_body_of_another() -> None:
    # given the body of every function of tests/ and testkit/ but the tests themselves
    places: dict[str, list[str]] = defaultdict(list)
    for path in SUPPORT:
        for function in _all_functions(path):
            if not function.name.startswith("test_") and (body := _body(function)):
                where = f"{path.relative_to(ROOT)}:{function.lineno} {function.name}"
                places[body].append(where)
    # then no two are the same: a copy is a helper to share
    assert [found for found in places.values() if len(found) > 1] == []
