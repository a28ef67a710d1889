"""Step templates and conditions: what they may read, what they render to, and the sandbox's
bounds (escapes, undefined names, size and work), all without a server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.limits import MAX_RANGE, MAX_RENDER_S, MAX_RENDERED, MAX_TEMPLATE_OPS
from core.templates import (
    TemplateError,
    condition,
    evaluate,
    input_problems,
    literal,
    render_text,
    render_value,
    template_problems,
)

VARIABLES: dict[str, Any] = {
    "input": {"customer": "ACME", "ids": [3, 1, 2], "items": ["a", "b"], "big": "x" * 60_000},
    "steps": {"research": {"output": {"summary": "Found 3.", "items": [10, 20], "score": 0.7}}},
}


def _refused(source: str, variables: dict[str, Any] = VARIABLES) -> str:
    with pytest.raises(TemplateError) as refused:
        render_text(source, variables)
    message = str(refused.value)
    assert message.startswith("The message ")
    return message


def _problems(source: str, *, expression: bool = False, steps: tuple[str, ...] = ()) -> list[str]:
    return template_problems(source, expression=expression, steps=steps, names={"input"})


# --- rendering -------------------------------------------------------------------------------


def test_a_message_reads_the_input_and_the_outputs_it_is_given() -> None:
    source = (
        "For {{ input.customer }}: {{ steps.research.output.summary }} "
        "({{ input.ids|sort|join(',') }})"
    )
    assert render_text(source, VARIABLES) == "For ACME: Found 3. (1,2,3)"


def test_a_key_of_the_data_wins_over_a_method_of_the_same_name() -> None:
    # `items` is the answer's field, not dict.items: the data is JSON first.
    assert render_text("{{ steps.research.output.items|sum }}", VARIABLES) == "30"
    assert render_text("{{ input.items|join }}", VARIABLES) == "ab"


def test_loops_conditions_and_filters_work_as_in_jinja() -> None:
    source = "{% for i in input.ids %}{% if loop.first %}[{% endif %}{{ i * 2 }}{% endfor %}"
    assert render_text(source, VARIABLES) == "[624"
    assert render_text("{{ '%.1f'|format(steps.research.output.score) }}", VARIABLES) == "0.7"
    assert render_text("{{ input.customer.lower() }}", VARIABLES) == "acme"


def test_text_is_sent_as_written_trailing_newline_included() -> None:
    assert render_text("line\n", {}) == "line\n"


def test_an_undefined_name_fails_with_a_message_naming_it() -> None:
    assert "'missing' is undefined" in _refused("Hello {{ missing }}")
    assert "has no attribute 'nope'" in _refused("{{ input.nope }}")
    # Strict: not even a test of truth passes over an undefined name.
    assert "'nope'" in _refused("{% if input.nope %}x{% endif %}")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ input.__class__ }}",
        "{{ input['__class__'] }}",
        "{{ range.__globals__ }}",
        "{{ (input.ids|first).__class__.__subclasses__() }}",
        "{{ input.ids.append(4) }}",  # the data a render reads is never changed by it
        "{{ input.pop('ids') }}",
    ],
)
def test_private_and_internal_attributes_and_mutations_are_out_of_reach(source: str) -> None:
    assert "is not available in templates (on " in _refused(source)
    assert VARIABLES["input"]["ids"] == [3, 1, 2]


def test_jinja_helpers_that_could_escape_or_grow_are_absent() -> None:
    assert "No filter named 'attr'" in _refused("{{ ''|attr('__class__') }}")
    assert "has no attribute '_private'" in _refused("{{ input.customer._private }}")
    for helper in ("lipsum", "namespace", "cycler", "joiner"):
        assert f"'{helper}' is undefined" in _refused(f"{{{{ {helper}() }}}}")


@pytest.mark.parametrize(
    "source",
    [
        "{{ '{:>999999999}'.format(1) }}",  # str.format: not a method templates have
        "{{ 'a'.ljust(10**9) }}",
        "{{ 'a'.center(10**9) }}",
        "{{ 'a'.zfill(10**9) }}",
        "{{ '\t'.expandtabs(10**9) }}",
        "{{ input.customer.replace('', input.big) }}",
    ],
)
def test_methods_that_grow_a_value_are_not_available(source: str) -> None:
    assert "is not available in templates" in _refused(source)


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("{{ 'a' * 10**9 }}", f"over {MAX_RENDERED:,} characters"),
        ("{{ [1] * 10**9 }}", f"over {MAX_RENDERED:,} characters"),
        ("{{ 10**9 * 'a' }}", f"over {MAX_RENDERED:,} characters"),
        ("{{ range(10**9)|list }}", f"at most {MAX_RANGE:,}"),
        ("{{ 10 ** 100000 }}", "over 14,000 bits"),
        ("{{ (10 ** 4000) * (10 ** 4000) * (10 ** 4000) }}", "over 14,000 bits"),
        ("{{ '%999999999d' % 1 }}", "width or precision"),
        ("{{ '%999999999d'|format(1) }}", "width or precision"),
        ("{{ '%*d'|format(10**9, 1) }}", "width or precision"),
        ("{{ input.big|replace('', input.big) }}", f"over {MAX_RENDERED:,} characters"),
        ("{{ input.big|indent(10**9) }}", "indents by over"),
        ("{{ input|tojson(10**9) }}", "indents JSON"),
        # Built, then only measured: refused while building, not by the output's bound.
        ("{{ (input.big ~ input.big ~ input.big ~ input.big ~ input.big)|length }}", "over"),
        ("{{ (input.big + input.big + input.big + input.big + input.big)|length }}", "over"),
        ("{% set a = [input.big] * 3 %}{% set b = [a, a] %}{{ b|length }}", "over"),
        ("{% set a = [input.big] * 3 %}{% set b = {'x': a, 'y': a} %}{{ b|length }}", "over"),
        ("{{ ([input.big] * 5)|join }}", "over"),
        ("{% for i in range(5) %}{{ input.big }}{% endfor %}", "over"),
    ],
)
def test_values_beyond_the_size_bound_are_refused_before_they_are_built(
    source: str, cause: str
) -> None:
    started = time.monotonic()
    assert cause in _refused(source)
    assert time.monotonic() - started < 1  # refused before any huge allocation


def test_nested_loops_run_out_of_work_not_of_time() -> None:
    source = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    assert f"over {MAX_TEMPLATE_OPS:,} steps of work" in _refused(source)
    assert time.monotonic() - started < MAX_RENDER_S


def test_slow_work_within_the_budget_is_stopped_by_the_deadline() -> None:
    # Each turn is cheap in steps but works over 60,000 characters.
    source = (
        "{% for i in input.ids * 300 %}{% for j in input.ids * 30 %}"
        "{{ input.big|upper|length }}{% endfor %}{% endfor %}"
    )
    started = time.monotonic()
    assert f"takes too long (over {MAX_RENDER_S:g} s)" in _refused(source)
    assert time.monotonic() - started < MAX_RENDER_S + 0.5


def test_a_budget_is_per_render() -> None:
    # Given a render that spends most of the budget
    source = "{% for i in range(9000) %}{{ i }}{% endfor %}"
    # When it renders many times over, each render starts afresh
    for _ in range(20):
        assert render_text(source, {}).endswith("8999")


# --- conditions and expressions --------------------------------------------------------------


def test_a_condition_is_jinja_truth() -> None:
    assert condition("steps.research.output.score > 0.5", VARIABLES) is True
    assert condition("input.ids|length > 3", VARIABLES) is False
    assert condition("'ACME' in input.customer", VARIABLES) is True
    assert condition("input.ids|select('gt', 5)|list", VARIABLES) is False  # an empty list


def test_an_undefined_name_in_a_condition_fails_rather_than_reads_false() -> None:
    with pytest.raises(TemplateError, match="The condition reads something undefined"):
        condition("input.nope", VARIABLES)
    with pytest.raises(TemplateError, match="'missing' is undefined"):
        condition("missing", VARIABLES)


def test_an_expression_gives_json_sequences_as_lists() -> None:
    assert evaluate("input.ids|map('string')", VARIABLES) == ["3", "1", "2"]
    assert evaluate("steps.research.output", VARIABLES)["score"] == 0.7
    with pytest.raises(TemplateError, match="undefined"):
        evaluate("missing", VARIABLES)


def test_an_expression_is_bounded_like_a_template() -> None:
    with pytest.raises(TemplateError, match="The expression builds a value over"):
        evaluate("'a' * 10**9", VARIABLES)
    with pytest.raises(TemplateError, match="not available"):
        evaluate("''.__class__", VARIABLES)


# --- JSON inputs -----------------------------------------------------------------------------


def test_a_single_expression_keeps_its_type_and_other_texts_render_to_text() -> None:
    template = {
        "ids": "{{ input.ids }}",
        "count": " {{ input.ids|length }} ",
        "score": "{{ steps.research.output.score }}",
        "none": "{{ none }}",
        "text": "for {{ input.customer }}",
        "two": "{{ input.ids|length }}{{ input.customer }}",
        "trimmed": "{{- input.ids -}}",
        "comment": "{{ input.ids|length }}{# a note #}",
        "range": "{{ range(3) }}",
        "nested": [{"{{ key }}": "{{ input.customer }}"}, 5, True, None],
    }
    assert render_value(template, VARIABLES) == {
        "ids": [3, 1, 2],
        "count": 3,
        "score": 0.7,
        "none": None,
        "text": "for ACME",
        "two": "3ACME",
        "trimmed": [3, 1, 2],
        "comment": "3",
        "range": [0, 1, 2],
        "nested": [{"{{ key }}": "ACME"}, 5, True, None],  # keys are not templates
    }


def test_a_rendered_input_is_bounded_as_a_whole() -> None:
    template = {key: "{{ input.big }}" for key in "abcde"}  # each part fits, the whole not
    with pytest.raises(TemplateError, match=f"^The input builds a value over {MAX_RENDERED:,}"):
        render_value(template, VARIABLES)
    assert len(render_value({"a": "{{ input.big }}"}, VARIABLES)["a"]) == 60_000


def test_an_input_value_json_cannot_hold_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"^The input is a function, which JSON cannot hold$"):
        render_value({"r": "{{ range }}"}, VARIABLES)
    with pytest.raises(TemplateError, match="JSON cannot hold"):
        render_value({"r": "{{ 1e308 * 10 }}"}, VARIABLES)


# --- checks at save --------------------------------------------------------------------------


def test_a_template_may_read_input_and_the_outputs_of_the_steps_it_names() -> None:
    assert _problems("{{ input.a }} {{ steps.research.output.x }}", steps=("research",)) == []
    assert _problems("{{ steps['research'].output }}", steps=("research",)) == []
    assert _problems("{{ steps.research['output'].x }}", steps=("research",)) == []
    assert _problems("{% for x in input.a %}{{ x }}{{ loop.index }}{% endfor %}") == []
    assert _problems("{{ range(3)|list }} {{ dict(a=1) }}") == []


def test_a_step_not_among_the_needs_is_refused_by_name() -> None:
    assert _problems("{{ steps.other.output }}", steps=("research",)) == [
        "reads steps.other.output, but other is not one of its needs"
    ]


@pytest.mark.parametrize(
    "source",
    ["{{ steps }}", "{{ steps.research }}", "{{ steps.research.status }}", "{{ steps[k].output }}"],
)
def test_steps_are_read_only_as_their_output(source: str) -> None:
    problems = _problems(source, steps=("research",))
    assert "reads steps otherwise than as steps.<key>.output" in problems


def test_a_secret_is_refused_with_the_reason() -> None:
    (problem,) = _problems("Token: {{ secret.API_TOKEN }}")
    assert problem.startswith("reads a secret: a secret's value must never be stored with a run")
    assert "request header" in problem


def test_an_unknown_name_is_refused_with_the_names_it_may_read() -> None:
    assert _problems("{{ item }}") == [
        "reads item, which is not defined here (it may read input, steps)"
    ]
    assert _problems("{{ self }}") == [
        "reads self, which is not defined here (it may read input, steps)"
    ]
    assert (
        template_problems(
            "{{ item }} {{ index }}", expression=False, steps=(), names={"input", "item", "index"}
        )
        == []
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{% macro f() %}{% endmacro %}", "uses macros"),
        ("{% for x in input recursive %}{{ loop(x) }}{% endfor %}", "uses a recursive loop"),
        ("{% include 'x' %}", "uses includes"),
        ("{% set x %}a{% endset %}", "uses block assignments"),
        ("{% filter upper %}a{% endfilter %}", "uses filter blocks"),
        ("{% block b %}a{% endblock %}", "uses blocks"),
        ("{{ input|_each }}", "uses a filter that is not available"),
        ("{{ input|center(9) }}", "does not compile: No filter named 'center'"),
        ("{{ input.", "does not compile"),
        ("{{ input }", "does not compile"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),
        ("{{ 1" + " + 1" * 4000 + " }}", "nests too deeply"),
        ("{% if 1 %}" * 2000 + "{% endif %}" * 2000, "nests too deeply"),
    ],
)
def test_constructs_outside_the_bounded_language_are_refused_at_save(
    source: str, problem: str
) -> None:
    assert any(found.startswith(problem) for found in _problems(source)), _problems(source)


def test_a_condition_is_checked_as_an_expression() -> None:
    assert _problems("input.a > 1", expression=True) == []
    assert _problems("input.a >", expression=True)[0].startswith("does not compile")
    assert _problems("input.a }} {{ input.b", expression=True) == [
        "does not compile: text after the expression (line 1)"
    ]
    assert _problems("steps.x.output", expression=True, steps=()) == [
        "reads steps.x.output, but x is not one of its needs"
    ]


def test_an_input_template_is_checked_text_by_text_as_it_renders() -> None:
    template = {
        "a": "{{ input.x }}",
        "b": ["{{- steps.other.output -}}", {"c": "n={{ item }}"}],
        "d": "{{ input.x }}{# fine #}",
        "e": "{{ input.x > }}",
    }
    assert input_problems(template, steps=("research",), names={"input"}) == [
        "reads steps.other.output, but other is not one of its needs",
        "reads item, which is not defined here (it may read input, steps)",
        "does not compile: unexpected 'end of template' (line 1)",
    ]
    assert input_problems(None, steps=(), names={"input"}) == []


# --- literal text ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}%#\r\n -ab'\"\\")), max_size=60) | st.text())
def test_a_literal_renders_to_its_text_exactly(text: str) -> None:
    assert render_text(literal(text), {}) == text


def test_a_literal_of_plain_text_is_the_text() -> None:
    assert literal("Summarise the news.\n") == "Summarise the news.\n"


def test_pythons_internal_names_are_refused_at_save_and_keys_with_underscores_are_data() -> None:
    # the way out of the sandbox is refused when the template is saved, not only at render
    assert template_problems(
        "{{ ''.__class__.__mro__ }} {{ input['__globals__'] }}",
        expression=False,
        steps=(),
        names={"input"},
    ) == [
        "reads __class__, __globals__, __mro__: Python's internal names (__x__) are not "
        "available in templates"
    ]
    assert template_problems("input.__class__", expression=True, steps=(), names={"input"})
    # while keys of the data that start with _ are saved and read as the keys they are
    source = "{{ input._id }} {{ input.__typename }}"
    assert template_problems(source, expression=False, steps=(), names={"input"}) == []
    assert render_text(source, {"input": {"_id": 7, "__typename": "Order"}}, what="t") == "7 Order"
