"""The automation page with a graph, through Streamlit's AppTest: the graph drawn (its DOT:
steps, needs, optional needs dashed, conditions and fan-outs marked), and the YAML editor
that saves a graph or shows each problem, as text, and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from core.automation import steps_of
from core.egress import EgressPolicy
from core.graph import parse_graph
from dashboard import forms, graph_view
from db import queries
from db.session import session_scope
from testkit.factories import ADMIN, make_automation, table_snapshot
from testkit.pages import open_view, texts

pytestmark = pytest.mark.usefixtures("db", "redis_client")

GRAPH: list[dict[str, Any]] = [
    {"key": "plan", "name": "Plan the research", "message": "List sources on {{ input.topic }}"},
    {
        "key": "read",
        "message": "Summarise {{ item }}",
        "needs": ["plan"],
        "for_each": "steps.plan.output.sources",
    },
    {"key": "check", "message": "Check", "needs": ["plan"], "when": "input.strict"},
    {
        "key": "brief",
        "message": "Write {{ steps.read.output }}",
        "needs": ["read"],
        "optional_needs": ["check"],
    },
]


def _charts(at: AppTest) -> list[str]:
    return [str(chart.proto.spec) for chart in at.get("graphviz_chart")]


def _automation_page(automation_id: object) -> AppTest:
    at = open_view("automations")
    at.selectbox(key="auto_selected").set_value(str(automation_id)).run()
    assert not at.exception, at.exception
    return at


def test_the_page_draws_a_graphs_steps_needs_conditions_and_fan_outs() -> None:
    # given a saved graph
    automation = make_automation(name="Research", steps=steps_of(GRAPH))
    # when its page is opened
    at = _automation_page(automation)
    # then the graph is drawn: a node per step, named, an edge per need, the optional dashed
    [spec] = _charts(at)
    assert '"plan" [label="Plan the research\\n[plan]"' in spec
    assert '"read" [label="read\\nfor each in\\nsteps.plan.output.sources", peripheries=2' in spec
    assert '"check" [label="check\\nif input.strict", style="rounded,filled,dashed"]' in spec
    for edge in ('"plan" -> "read";', '"plan" -> "check";', '"read" -> "brief";'):
        assert edge in spec
    assert '"check" -> "brief" [style=dashed' in spec
    # and the steps are edited as YAML, shown as saved
    assert at.toggle(key=f"auto_{automation}_steps_as_yaml").value is True
    shown = at.text_area(key=f"auto_{automation}_steps_yaml").value
    assert yaml.safe_load(shown) == GRAPH


def test_a_line_is_drawn_as_a_chain_and_keeps_its_table() -> None:
    automation = make_automation(name="Line", steps=2)
    at = _automation_page(automation)
    [spec] = _charts(at)
    assert '"step_1" -> "step_2";' in spec
    assert at.toggle(key=f"auto_{automation}_steps_as_yaml").value is False


def test_a_graph_is_created_from_yaml() -> None:
    at = open_view("automations")
    at.text_input(key="auto_new_name").input("Research").run()
    at.text_input(key="auto_new_agent_url").input("http://127.0.0.1:9/agent").run()
    at.toggle(key="auto_new_steps_as_yaml").set_value(True).run()
    at.text_area(key="auto_new_steps_yaml").input(yaml.safe_dump(GRAPH, sort_keys=False)).run()
    # then, before any Save, the edited graph is drawn as a preview
    assert [e.label for e in at.expander] == ["Preview of the edited graph (not saved yet)"]
    [preview] = _charts(at)
    assert '"read" -> "brief";' in preview
    at.button(key="auto_new_save").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        [row] = queries.list_automations(session, actor=ADMIN)
    assert row.steps == GRAPH
    # and the page now draws it
    assert any('"read" -> "brief";' in spec for spec in _charts(at))


HOSTILE = "[x](https://evil.example) **b** :red[c] <b>d</b>"


def test_each_problem_of_a_graph_is_shown_as_text_and_nothing_is_written() -> None:
    at = open_view("automations")
    at.text_input(key="auto_new_name").input("Research").run()
    at.text_input(key="auto_new_agent_url").input("http://127.0.0.1:9/agent").run()
    at.toggle(key="auto_new_steps_as_yaml").set_value(True).run()
    bad = [
        {"key": "a", "message": "{{ ''.__class__ }}", "needs": ["b"]},
        {"key": "b", "message": "b", "needs": ["a"]},
        {"key": HOSTILE, "message": "c"},
    ]
    before = table_snapshot()
    at.text_area(key="auto_new_steps_yaml").input(yaml.safe_dump(bad)).run()
    assert _charts(at) == []  # no preview of a graph that does not pass its checks
    at.button(key="auto_new_save").click().run()
    assert not at.exception, at.exception
    # then the key that is no slug is named, characters as typed, in a source that escapes
    # every mark (no link, no bold, no colour)
    shown = texts(at)
    assert f"step 3's key {HOSTILE!r} must be a slug" in shown
    [source] = [str(e.value) for e in at.error if "slug" in str(e.value)]
    assert "](" not in source and ":red[" not in source and "\\*\\*b\\*\\*" in source
    assert table_snapshot() == before
    # when that step is fixed, the cycle and the escape are both shown, a line each
    bad[2]["key"] = "c"
    at.text_area(key="auto_new_steps_yaml").input(yaml.safe_dump(bad)).run()
    at.button(key="auto_new_save").click().run()
    shown = texts(at)
    assert "steps a and b wait for each other in a cycle (a needs b and b needs a)" in shown
    assert table_snapshot() == before
    # and YAML that does not read says where
    at.text_area(key="auto_new_steps_yaml").input("- key: a\n  message: [unclosed\n").run()
    at.button(key="auto_new_save").click().run()
    assert "the YAML does not read" in texts(at) and "line 3" in texts(at)
    assert table_snapshot() == before


def test_dot_text_shows_every_step_text_as_typed() -> None:
    # a name with DOT's quotes, escapes and an HTML-like label stays one quoted string
    graph = parse_graph(
        [{"key": "a", "name": 'say "hi" \\N <b>x</b>\nnext', "message": "m"}],
        egress=EgressPolicy(),
    )
    spec = graph_view.dot(graph)
    assert '"a" [label="say \\"hi\\" \\\\N <b>x</b> next\\n[a]"' in spec


def test_steps_yaml_round_trips() -> None:
    text = forms.steps_yaml(GRAPH)
    assert list(forms.parse_steps_yaml(text)) == GRAPH
    assert forms.parse_steps_yaml(forms.steps_yaml([{"name": "a", "message": "b"}]))[0].name == "a"
