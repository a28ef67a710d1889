"""What an automation may be made of, and what of its URL may be shown."""

from __future__ import annotations

import pytest

from core.automation import (
    REDACTED,
    AutomationInput,
    Step,
    is_graph,
    redact_url,
    steps_of,
    validate_automation,
)
from core.egress import EgressPolicy
from core.errors import ValidationFailed
from core.graph import chain, graph_of, to_data


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://a.example/x?api_key=K&region=eu",
            f"https://a.example/x?api_key={REDACTED}&region=eu",
        ),
        (
            "https://a.example/x?TOKEN=t&Sig=s",
            f"https://a.example/x?TOKEN={REDACTED}&Sig={REDACTED}",
        ),
        (
            "https://a.example/x?access-key=1&password=2",
            f"https://a.example/x?access-key={REDACTED}&password={REDACTED}",
        ),
        ("https://bob:pw@a.example/x", f"https://bob:{REDACTED}@a.example/x"),
        ("https://a.example/x?q=1", "https://a.example/x?q=1"),
        ("https://a.example/agent", "https://a.example/agent"),
    ],
)
def test_secret_looking_parts_of_a_url_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- a graph's steps: told from a line's, checked at save, read back ------------------------


def test_a_list_without_keys_is_a_line_and_one_with_keys_a_graph() -> None:
    line = steps_of([{"name": "a", "message": "do {{ it }}"}, {"message": "b"}])
    assert line == (Step("a", "do {{ it }}"), Step("", "b")) and not is_graph(line)
    graph = steps_of([{"key": "a", "message": "m", "when": None}])
    assert graph == ({"key": "a", "message": "m", "when": None},) and is_graph(graph)


def test_a_graph_field_on_a_line_is_refused_naming_the_step_and_the_field() -> None:
    with pytest.raises(ValidationFailed) as refused:
        steps_of([{"message": "a"}, {"message": "b", "when": "input.x", "needs": ["a"]}])
    [error] = refused.value.errors
    assert error.field == "steps" and error.message.startswith("step 2 sets needs, when but")


def test_a_graph_is_checked_whole_at_save_with_the_egress_policy() -> None:
    data = AutomationInput(
        name="g",
        agent_url="https://agent.example.com/run",
        steps=steps_of(
            [
                {
                    "key": "a",
                    "message": "{{ input['__x__'] }} {{ input._id }} {{ input.__typename }}",
                    "agent_url": "http://10.0.0.1/",
                },
                {"key": "b", "message": "b", "needs": ["b"]},
            ]
        ),
    )
    with pytest.raises(ValidationFailed) as refused:
        validate_automation(data, egress=EgressPolicy())
    assert [e.message for e in refused.value.errors] == ["step b needs itself"]
    ok = steps_of(
        [
            {
                "key": "a",
                "message": "{{ input['__x__'] }} {{ input._id }} {{ input.__typename }}",
                "agent_url": "http://10.0.0.1/",
            }
        ]
    )
    with pytest.raises(ValidationFailed) as refused:
        validate_automation(
            AutomationInput(name="g", agent_url="https://agent.example.com/run", steps=ok),
            egress=EgressPolicy(),
        )
    assert [e.message for e in refused.value.errors] == [
        "step a's message reads __x__: Python's internal names (__x__) are not available in "
        "templates",
        "step a's agent_url is not allowed: 10.0.0.1 is an internal address (internal "
        "addresses are refused unless an administrator allows them with STEPWISE_AGENT_ALLOW)",
    ]


def test_stored_steps_read_back_as_their_graph() -> None:
    assert graph_of([{"name": "x", "message": "a {{ b }}"}]) == chain([Step("x", "a {{ b }}")])
    data = [
        {"key": "a", "message": "m"},
        {"key": "b", "message": "n", "needs": ["a"], "timeout_s": 9, "request_headers": {"X": "y"}},
    ]
    assert to_data(graph_of(data)) == data
