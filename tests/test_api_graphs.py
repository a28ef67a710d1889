"""Graphs through the REST API: saved, read back as sent, and each class of refusal with its
message and nothing written; lines keep their request and answer shapes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import secrets as secret_service
from testkit.api import writes
from testkit.factories import ADMIN

AGENT = "http://127.0.0.1:8787/agent"
GRAPH: list[dict[str, Any]] = [
    {"key": "plan", "name": "Plan", "message": "List sources on {{ input.topic }}"},
    {
        "key": "read",
        "name": "Read",
        "message": "Summarise {{ item }} ({{ index }})",
        "needs": ["plan"],
        "for_each": "steps.plan.output.sources",
        "timeout_s": 30,
        "max_retries": 2,
    },
    {
        "key": "check",
        "name": "Check",
        "message": "Check the plan",
        "needs": ["plan"],
        "input": {"plan": "{{ steps.plan.output }}", "strict": True},
        "when": "input.strict",
        "agent_url": "http://127.0.0.1:8787/checker",
        "request_headers": {"X-Team": "research"},
    },
    {
        "key": "brief",
        "name": "Brief",
        "message": "Write the brief from {{ steps.read.output }}",
        "needs": ["read"],
        "optional_needs": ["check"],
    },
]


def _automation(steps: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"name": "Research", "agent_url": AGENT, "steps": steps, **more}


def test_a_graph_is_saved_and_read_back_as_sent(client: TestClient, admin: dict[str, str]) -> None:
    # when a graph is created
    made = client.post("/v1/automations", json=_automation(GRAPH), headers=admin)
    # then it is answered, read and listed in its plain form, as sent
    assert made.status_code == 201, made.text
    assert made.json()["steps"] == GRAPH
    got = client.get(f"/v1/automations/{made.json()['id']}", headers=admin)
    assert got.json()["steps"] == GRAPH
    assert client.get("/v1/automations", headers=admin).json()[0]["steps"] == GRAPH
    # and a PUT of the steps read back saves them as they are; one with a step less drops it
    body = _automation(got.json()["steps"])
    put = client.put(f"/v1/automations/{made.json()['id']}", json=body, headers=admin)
    assert put.status_code == 200 and put.json()["steps"] == GRAPH
    shorter = _automation([*GRAPH[:2], {**GRAPH[3], "optional_needs": []}])
    put = client.put(f"/v1/automations/{made.json()['id']}", json=shorter, headers=admin)
    assert put.status_code == 200, put.text
    # (fields left at their defaults are left out: an empty list is no optional need)
    assert put.json()["steps"][2] == {k: v for k, v in GRAPH[3].items() if k != "optional_needs"}


def test_a_line_keeps_its_shapes(client: TestClient, admin: dict[str, str]) -> None:
    line = [{"name": "one", "message": "do {{ part }} one"}, {"message": "two"}]
    made = client.post("/v1/automations", json=_automation(line), headers=admin)
    assert made.status_code == 201, made.text
    # a line's messages are sent as written: braces are no template, and not checked as one
    assert made.json()["steps"] == [
        {"name": "one", "message": "do {{ part }} one"},
        {"name": "", "message": "two"},
    ]


def test_a_graph_field_on_a_step_without_a_key_is_refused(
    client: TestClient, admin: dict[str, str]
) -> None:
    before = writes()
    line = [{"name": "one", "message": "one"}, {"message": "two", "needs": ["one"]}]
    answer = client.post("/v1/automations", json=_automation(line), headers=admin)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["message"].startswith(
        "step 2 sets needs but has no key: a step's key, needs, when, for_each and own "
        "settings make the automation a graph"
    )
    assert writes() == before


REFUSALS = [
    (
        [
            {"key": "a", "message": "a", "needs": ["c"]},
            {"key": "b", "message": "b", "needs": ["a"]},
            {"key": "c", "message": "c", "needs": ["b"]},
        ],
        "steps a, b and c wait for each other in a cycle",
    ),
    ([{"key": "a", "message": "a", "needs": ["nope"]}], "step a needs nope, which is not a step"),
    ([{"key": "a", "message": "a"}, {"key": "a", "message": "b"}], "two steps have the key a"),
    (
        [{"key": "a", "message": "{{ ''.__class__ }}"}],
        "step a's message reads __class__: Python's internal names (__x__) are not available",
    ),
    (
        [{"key": "a", "message": "{{ steps.b.output }}"}, {"key": "b", "message": "b"}],
        "step a's message reads steps.b.output, but b is not one of its needs",
    ),
    (
        [{"key": "a", "message": "a", "agent_url": "http://169.254.169.254/latest"}],
        "step a's agent_url is not allowed: 169.254.169.254 is an internal address",
    ),
    (
        [{"key": "a", "message": "a", "request_headers": {"Authorization": "Bearer abc"}}],
        "step a's request_headers: Authorization carries a credential",
    ),
]


@pytest.mark.parametrize(("steps", "message"), REFUSALS)
def test_each_class_of_refusal_names_its_steps_and_writes_nothing(
    client: TestClient, admin: dict[str, str], steps: list[dict[str, Any]], message: str
) -> None:
    before = writes()
    answer = client.post("/v1/automations", json=_automation(steps), headers=admin)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert any(e["field"] == "steps" and e["message"].startswith(message) for e in errors), errors
    assert writes() == before


def test_a_step_may_not_send_a_secret_to_an_origin_it_is_not_bound_to(
    client: TestClient, admin: dict[str, str]
) -> None:
    # given a secret bound to the automation's agent only
    secret_service.set_secret(
        "AGENT_TOKEN", "tok-Rw83value", actor=ADMIN, origins=["http://127.0.0.1:8787"]
    )
    headers = {"Authorization": "Bearer {{ secret.AGENT_TOKEN }}"}
    ok = [{"key": "a", "message": "a", "agent_url": "http://127.0.0.1:8787/other"}]
    made = client.post(
        "/v1/automations", json=_automation(ok, request_headers=headers), headers=admin
    )
    assert made.status_code == 201, made.text
    before = writes()
    # when a step sends the automation's headers, or its own, to another origin
    cases = [
        (
            _automation(
                [{"key": "a", "message": "a", "agent_url": "http://127.0.0.1:9/agent"}],
                request_headers=headers,
            ),
            "step a would send the automation's request_headers to its agent_url: "
            "the secret AGENT_TOKEN may not be sent to http://127.0.0.1:9",
        ),
        (
            _automation(
                [
                    {"key": "a", "message": "a"},
                    {
                        "key": "b",
                        "message": "b",
                        "needs": ["a"],
                        "agent_url": "https://elsewhere.example.com/agent",
                        "request_headers": headers,
                    },
                ]
            ),
            "step b would send its request_headers to its agent_url: the secret AGENT_TOKEN "
            "may not be sent to https://elsewhere.example.com:443",
        ),
    ]
    for body, message in cases:
        answer = client.post("/v1/automations", json=body, headers=admin)
        # then it is refused, naming the step, the secret and the origin; nothing is written
        assert answer.status_code == 422, answer.text
        assert [e["message"] for e in answer.json()["errors"]] == [
            message + ": a workspace admin allows it on the Workspace page (where the secret "
            "is sent)"
        ]
    assert writes() == before


GRAPH_FIELDS = {
    "key",
    "needs",
    "optional_needs",
    "input",
    "when",
    "for_each",
    "agent_url",
    "timeout_s",
    "max_retries",
    "request_headers",
    "kind",
    "sleep_s",
    "sleep_until",
    "approvers",
    "on_reject",
    "on_timeout",
}


def test_the_openapi_schema_documents_a_graphs_step_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    step_in, step_out = schemas["StepIn"], schemas["StepOut"]
    # every field of a graph's step, optional and described, in what is sent and answered
    for schema in (step_in, step_out):
        assert set(schema["properties"]) >= GRAPH_FIELDS, schema
    # (a sleep has no message: none is required in, every step answers one, "" if none)
    assert "required" not in step_in and set(step_out["required"]) == {"message"}
    for schema in (step_in, step_out):
        assert all(schema["properties"][f].get("description") for f in GRAPH_FIELDS)
    # and the automation's example is a graph, with a condition, a fan-out and a join
    [example] = schemas["AutomationIn"]["examples"]
    assert {"when", "for_each", "optional_needs"} <= {f for s in example["steps"] for f in s}
