"""Workflow graphs without a server: the plain form and its checks at save, what runs next,
skips, failure and cancellation, fan-out and retry."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

import pytest

from core.automation import Step
from core.egress import EgressPolicy
from core.errors import InvalidState, ValidationFailed
from core.graph import (
    Graph,
    GraphStep,
    Plan,
    StepProgress,
    call_key,
    chain,
    fan_out_state,
    graph_of,
    is_graph,
    items_of,
    items_to_cancel,
    items_to_start,
    parse_graph,
    plan,
    render_call,
    retry,
    to_data,
)
from core.limits import (
    MAX_EXPRESSION,
    MAX_INPUT_BYTES,
    MAX_ITEMS,
    MAX_MESSAGE,
    MAX_NEEDS,
    MAX_STEPS,
)
from core.templates import TemplateError, render_text
from core.vocabulary import ExecutionStatus, StepKind, StepState

EGRESS = EgressPolicy()
PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELLED = (
    StepState.PENDING,
    StepState.RUNNING,
    StepState.SUCCEEDED,
    StepState.FAILED,
    StepState.SKIPPED,
    StepState.CANCELLED,
)


def graph_of_steps(*steps: dict[str, Any]) -> Graph:
    return parse_graph([{"message": f"do {s['key']}", **s} for s in steps], egress=EGRESS)


def refusals(data: Any) -> list[str]:
    with pytest.raises(ValidationFailed) as refused:
        parse_graph(data, egress=EGRESS)
    assert {error.field for error in refused.value.errors} == {"steps"}
    return [error.message for error in refused.value.errors]


def done(output: Any = None) -> StepProgress:
    return StepProgress(SUCCEEDED, output)


# A diamond: one root, two branches, a join.
DIAMOND = graph_of_steps(
    {"key": "fetch"},
    {"key": "left", "needs": ["fetch"]},
    {"key": "right", "needs": ["fetch"]},
    {"key": "join", "needs": ["left", "right"]},
)


# --- the plain form --------------------------------------------------------------------------


def test_every_field_survives_the_round_trip_through_the_plain_form() -> None:
    data = [
        {"key": "research", "name": "Research", "message": "Look into {{ input.topic }}"},
        {
            "key": "per_source",
            "needs": ["research"],
            "optional_needs": ["extra"],
            "message": "Read {{ item.url }} ({{ index }})",
            "input": {"url": "{{ item.url }}", "depth": 2, "tags": ["a", "{{ input.topic }}"]},
            "when": "steps.research.output.sources|length > 0",
            "for_each": "steps.research.output.sources",
            "agent_url": "https://agent.example.com/read",
            "timeout_s": 120,
            "max_retries": 0,
            "request_headers": {"X-Team": "news", "Authorization": "Bearer {{ secret.TOKEN }}"},
        },
        {"key": "extra", "message": "Anything else?"},
    ]
    graph = parse_graph(data, egress=EGRESS)
    assert to_data(graph) == data
    assert parse_graph(to_data(graph), egress=EGRESS) == graph
    step = graph.by_key["per_source"]
    assert step.kind is StepKind.CALL
    assert step.request_headers == (
        ("X-Team", "news"),
        ("Authorization", "Bearer {{ secret.TOKEN }}"),
    )


def test_settings_left_out_are_the_automations_and_stay_left_out() -> None:
    (step,) = graph_of_steps({"key": "only", "kind": "call"}).steps
    assert (step.agent_url, step.timeout_s, step.max_retries, step.request_headers) == (None,) * 4
    assert step.kind is StepKind.CALL
    assert to_data(Graph((step,))) == [{"key": "only", "message": "do only"}]


def test_order_puts_every_step_after_its_needs_and_keeps_the_written_order_otherwise() -> None:
    graph = graph_of_steps(
        {"key": "join", "needs": ["b", "a"]},
        {"key": "b"},
        {"key": "a"},
        {"key": "late", "needs": ["join"]},
    )
    assert [step.key for step in graph.order] == ["b", "a", "join", "late"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a list of at least one step"),
        ({"key": "a"}, "must be a list of at least one step"),
        ([{"key": f"s{n}", "message": "m"} for n in range(MAX_STEPS + 1)], f"at most {MAX_STEPS}"),
        (["a"], "step 1 must be an object with a key and a message"),
        ([{"message": "m"}], "step 1's key None must be a slug"),
        ([{"key": "Research", "message": "m"}], "step 1's key 'Research' must be a slug"),
        ([{"key": "fetch-data", "message": "m"}], "step 1's key 'fetch-data' must be a slug"),
        ([{"key": "a" * 65, "message": "m"}], "must be a slug"),
        ([{"key": "a", "message": "  "}], "step a's message must be a non-empty text"),
        ([{"key": "a", "message": "m", "nedds": []}], "step a has unknown fields: nedds"),
        (
            [{"key": "a", "message": "m", "needs": "b"}],
            "step a's needs must be a list of step keys",
        ),
        ([{"key": "a", "message": "m", "timeout_s": "9"}], "step a's timeout_s must be a whole"),
        ([{"key": "a", "message": "m", "max_retries": True}], "step a's max_retries must be a"),
        (
            [{"key": "a", "message": "m", "kind": "nap"}],
            "step a's kind must be call, async, approval or sleep",
        ),
        ([{"key": "a", "message": "m", "when": 1}], "step a's when must be a text"),
        ([{"key": "a", "message": "m", "request_headers": ["X"]}], "must be a mapping of names"),
        (
            [{"key": "a", "message": "m", "kind": ["call"]}],
            "step a's kind must be call, async, approval or sleep",
        ),
        (
            [{"key": "a", "message": "m", "input": "{{ input }}"}],
            "step a's input must be an object",
        ),
    ],
)
def test_a_malformed_plain_form_is_refused_naming_the_step(data: Any, message: str) -> None:
    assert any(message in found for found in refusals(data)), refusals(data)


def test_structural_problems_are_all_listed_with_the_steps_named() -> None:
    assert refusals(
        [
            {"key": "a", "message": "m", "needs": ["a", "ghost"]},
            {"key": "b", "message": "m", "needs": ["a"], "optional_needs": ["a"]},
            {"key": "a", "message": "m"},
        ]
    ) == [
        "two steps have the key a",
        "step a needs itself",
        "step a needs ghost, which is not a step",
        "step b lists a more than once in its needs",
    ]


def test_a_join_of_too_many_steps_is_refused() -> None:
    roots = [{"key": f"r{n}", "message": "m"} for n in range(MAX_NEEDS + 1)]
    join = {"key": "join", "message": "m", "needs": [r["key"] for r in roots]}
    assert refusals([*roots, join]) == [
        f"step join needs {MAX_NEEDS + 1} steps (at most {MAX_NEEDS})"
    ]
    parse_graph([*roots[:MAX_NEEDS], {**join, "needs": join["needs"][:MAX_NEEDS]}], egress=EGRESS)


def test_a_cycle_is_refused_naming_its_steps_and_their_needs() -> None:
    assert refusals(
        [
            {"key": "start", "message": "m"},
            {"key": "a", "message": "m", "needs": ["start", "c"]},
            {"key": "b", "message": "m", "needs": ["a"]},
            {"key": "c", "message": "m", "needs": ["b"]},
            {"key": "after", "message": "m", "needs": ["c"]},
        ]
    ) == [
        "steps a, b and c wait for each other in a cycle (a needs c, c needs b and b needs a): "
        "remove one of these needs"
    ]
    (two,) = refusals(
        [
            {"key": "x", "message": "m", "optional_needs": ["y"]},
            {"key": "y", "message": "m", "needs": ["x"]},
        ]
    )
    assert two.startswith("steps x and y wait for each other in a cycle")


def test_a_template_may_read_only_the_outputs_of_its_direct_needs() -> None:
    problems = refusals(
        [
            {"key": "a", "message": "m"},
            {"key": "b", "message": "{{ steps.a.output }}", "needs": ["a"]},
            # c needs b, which needs a: a is further up, not c's to read
            {"key": "c", "message": "{{ steps.b.output }} {{ steps.a.output }}", "needs": ["b"]},
            {"key": "d", "message": "m", "when": "steps.c.output", "needs": ["b"]},
            {"key": "e", "message": "m", "input": {"x": "{{ steps.z.output }}"}},
        ]
    )
    assert problems == [
        "step c's message reads steps.a.output, but a is not one of its needs",
        "step d's when reads steps.c.output, but c is not one of its needs",
        "step e's input reads steps.z.output, but z is not one of its needs",
    ]


def test_item_and_index_are_read_only_in_the_calls_of_a_fan_out() -> None:
    problems = refusals(
        [
            {"key": "plain", "message": "{{ item }}"},
            {
                "key": "fan",
                "message": "{{ item }} {{ index }}",
                "input": {"i": "{{ item }}"},
                "for_each": "input.list",
                "when": "item",
            },
        ]
    )
    assert problems == [
        "step plain's message reads item, which is not defined here (it may read input, steps)",
        "step fan's when reads item, which is not defined here (it may read input, steps)",
    ]


def test_a_secret_in_a_message_or_an_input_is_refused_with_the_reason() -> None:
    problems = refusals(
        [
            {"key": "a", "message": "key={{ secret.API_KEY }}"},
            {"key": "b", "message": "m", "input": {"auth": "{{ secret.API_KEY }}"}},
        ]
    )
    assert [p.split(": ")[0] for p in problems] == [
        "step a's message reads a secret",
        "step b's input reads a secret",
    ]
    assert all("send it in a request header instead" in p for p in problems)


def test_templates_that_do_not_compile_are_refused() -> None:
    problems = refusals(
        [
            {"key": "a", "message": "{{ input. }}"},
            {"key": "b", "message": "m", "when": "input.x >"},
            {"key": "c", "message": "m", "for_each": "input.x|nope"},
        ]
    )
    assert [p.split(" does not compile")[0] for p in problems] == [
        "step a's message",
        "step b's when",
        "step c's for_each",
    ]


def test_sizes_and_per_step_settings_are_checked_like_the_automations() -> None:
    problems = refusals(
        [
            {"key": "a", "message": "m" * (MAX_MESSAGE + 1)},
            {"key": "b", "message": "m", "when": "1" * (MAX_EXPRESSION + 1)},
            {"key": "c", "message": "m", "agent_url": "http://10.0.0.1/agent"},
            {"key": "d", "message": "m", "timeout_s": 0, "max_retries": 99},
            {"key": "e", "message": "m", "request_headers": {"Authorization": "Bearer clear"}},
            {"key": "f", "message": "m\x00"},
            {"key": "g", "message": "m", "input": {"x": "y" * MAX_INPUT_BYTES}},
            {"key": "h", "message": "m", "input": {"day": datetime.date(2026, 12, 7)}},
        ]
    )
    named = [p.split(" ", 2)[1] for p in problems]
    assert named == ["a's", "b's", "c's", "d's", "d's", "e's", "f", "g's", "h's"]
    assert "is not allowed: 10.0.0.1 is an internal address" in problems[2]
    assert "carries a credential" in problems[5]
    assert "NUL" in problems[6]
    assert problems[7] == "step g's input must be at most 64 KiB of JSON"
    assert problems[8].startswith("step h's input must hold only texts, numbers")


# --- chains ----------------------------------------------------------------------------------


def test_todays_steps_become_a_chain_sent_exactly_as_written() -> None:
    steps = [
        Step("Fetch", "Get the {{ latest }} news\r\n"),
        Step("", "Summarise {% raw %} it"),
        Step("Send", "Send it"),
    ]
    graph = chain(steps)
    assert [(s.key, s.name, s.needs) for s in graph.steps] == [
        ("step_1", "Fetch", ()),
        ("step_2", "", ("step_1",)),
        ("step_3", "Send", ("step_2",)),
    ]
    assert [render_text(s.message, {}) for s in graph.steps] == [s.message for s in steps]
    assert parse_graph(to_data(graph), egress=EGRESS) == graph
    assert graph.steps[2].message == "Send it"  # plain text is its own template


# --- what runs next --------------------------------------------------------------------------


def test_roots_start_together_and_a_join_waits_for_its_slowest_need() -> None:
    graph = graph_of_steps({"key": "a"}, {"key": "b"}, {"key": "join", "needs": ["a", "b"]})
    assert plan(graph, {}, None).start == ("a", "b")
    assert plan(graph, {"a": done(), "b": StepProgress(RUNNING)}, None).start == ()
    assert plan(graph, {"a": done(), "b": done()}, None).start == ("join",)


def test_a_diamond_runs_its_branches_in_parallel_and_ends_when_the_join_succeeds() -> None:
    assert plan(DIAMOND, {}, None).start == ("fetch",)
    assert plan(DIAMOND, {"fetch": done()}, None).start == ("left", "right")
    both = {"fetch": done(), "left": done(), "right": StepProgress(RUNNING)}
    assert plan(DIAMOND, both, None) == Plan()  # the join waits for right
    ended = {key: done() for key in ("fetch", "left", "right", "join")}
    assert plan(DIAMOND, ended, None).status is ExecutionStatus.SUCCEEDED


def test_a_false_condition_skips_its_step_and_those_that_need_it() -> None:
    graph = graph_of_steps(
        {"key": "classify"},
        {"key": "urgent", "needs": ["classify"], "when": "steps.classify.output.kind == 'urgent'"},
        {"key": "page", "needs": ["urgent"]},
        {"key": "after_page", "needs": ["page"]},
        {"key": "archive", "needs": ["classify"]},
    )
    next_ = plan(graph, {"classify": done({"kind": "normal"})}, None)
    assert next_.start == ("archive",)
    assert next_.skip == {
        "urgent": "its condition is false: steps.classify.output.kind == 'urgent'",
        "page": "step urgent was skipped",
        "after_page": "step page was skipped",
    }
    assert next_.status is None  # archive runs
    assert plan(graph, {"classify": done({"kind": "urgent"})}, None).start == ("urgent", "archive")


def test_an_optional_need_that_was_skipped_lets_its_step_run_and_reads_as_none() -> None:
    graph = graph_of_steps(
        {"key": "a", "when": "input.go"},
        {"key": "b"},
        {"key": "join", "needs": ["b"], "optional_needs": ["a"], "message": "{{ steps.a.output }}"},
    )
    skipped = plan(graph, {}, {"go": False})
    assert (skipped.start, dict(skipped.skip)) == (
        ("b",),
        {"a": "its condition is false: input.go"},
    )
    progress = {"a": StepProgress(SKIPPED), "b": done("B")}
    assert plan(graph, progress, {"go": False}).start == ("join",)
    assert render_call(graph.by_key["join"], {"go": False}, progress).message == "None"


def test_a_run_whose_every_step_was_skipped_succeeds() -> None:
    graph = graph_of_steps({"key": "a", "when": "false"}, {"key": "b", "needs": ["a"]})
    assert plan(graph, {}, None).status is ExecutionStatus.SUCCEEDED


def test_a_condition_that_cannot_be_evaluated_fails_its_step_and_the_run() -> None:
    graph = graph_of_steps({"key": "a", "when": "input.missing > 1"}, {"key": "b"})
    next_ = plan(graph, {}, {})
    assert list(next_.fail) == ["a"]
    assert "The condition of step a reads something undefined" in next_.fail["a"]
    assert next_.start == ()  # b would have started with a: nothing starts after a failure
    assert next_.cancel == {"b": "not started: step a failed"}
    assert next_.status is ExecutionStatus.FAILED


def test_a_failure_cancels_what_has_not_started_and_lets_running_steps_finish() -> None:
    graph = graph_of_steps(
        {"key": "a"},
        {"key": "slow"},
        {"key": "a2", "needs": ["a"]},
        {"key": "join", "needs": ["a2", "slow"]},
        {"key": "other"},
    )
    progress = {"a": StepProgress(FAILED), "slow": StepProgress(RUNNING), "other": done()}
    next_ = plan(graph, progress, None)
    assert next_.start == ()
    assert next_.cancel == {
        "a2": "not started: step a failed",
        "join": "not started: step a failed",
    }
    assert next_.status is None  # slow is still at the agent
    ended = {
        **progress,
        "slow": done(),
        "a2": StepProgress(CANCELLED),
        "join": StepProgress(CANCELLED),
    }
    assert plan(graph, ended, None) == Plan(status=ExecutionStatus.FAILED)


def test_a_run_a_person_cancelled_ends_cancelled() -> None:
    progress = {"fetch": done(), "left": StepProgress(CANCELLED), "right": StepProgress(CANCELLED)}
    next_ = plan(DIAMOND, progress, None)
    assert next_.cancel == {"join": "not started: step left cancelled"}
    assert next_.status is ExecutionStatus.CANCELLED


# --- fan-out ---------------------------------------------------------------------------------

FAN = graph_of_steps(
    {"key": "list"},
    {
        "key": "each",
        "needs": ["list"],
        "for_each": "steps.list.output.urls",
        "message": "Read {{ item }} ({{ index }} of {{ steps.list.output.urls|length }})",
        "input": {"url": "{{ item }}", "n": "{{ index }}"},
    },
)


def test_a_fan_out_gives_one_call_per_item_with_its_own_message_input_and_key() -> None:
    progress = {"list": done({"urls": ["u0", "u1"]})}
    step = FAN.by_key["each"]
    items = items_of(step, None, progress)
    assert items == ["u0", "u1"]
    calls = [render_call(step, None, progress, item=item, index=n) for n, item in enumerate(items)]
    assert [(c.message, c.input) for c in calls] == [
        ("Read u0 (0 of 2)", {"url": "u0", "n": 0}),
        ("Read u1 (1 of 2)", {"url": "u1", "n": 1}),
    ]
    run = uuid.UUID(int=7)
    assert call_key(run, "each", 1) == f"{run}:each:1"
    assert call_key(run, "list") == f"{run}:list"


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ({"a": 1}, "The for_each of step each is an object, not a list"),
        ("text", "The for_each of step each is a str, not a list"),
        (list(range(MAX_ITEMS + 1)), f"has {MAX_ITEMS + 1:,} items (at most {MAX_ITEMS:,})"),
    ],
)
def test_a_for_each_that_is_no_bounded_list_fails_the_step(urls: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        items_of(FAN.by_key["each"], None, {"list": done({"urls": urls})})


def test_a_for_each_of_exactly_the_limit_and_of_none_are_lists() -> None:
    step = FAN.by_key["each"]
    assert len(items_of(step, None, {"list": done({"urls": list(range(MAX_ITEMS))})})) == MAX_ITEMS
    # Items as big as answers may be (a list read, not built: no size bound of templates)
    urls = [{"page": "x" * 60_000}] * MAX_ITEMS
    assert len(items_of(step, None, {"list": done({"urls": urls})})) == MAX_ITEMS
    assert items_of(step, None, {"list": done({"urls": []})}) == []
    assert fan_out_state(()) is SUCCEEDED  # no item: the step succeeds at once


def test_a_missing_list_fails_the_step_with_the_name() -> None:
    with pytest.raises(TemplateError, match="has no attribute 'urls'"):
        items_of(FAN.by_key["each"], None, {"list": done({})})


def test_the_items_of_a_fan_out_make_its_state() -> None:
    assert fan_out_state((SUCCEEDED, RUNNING, PENDING)) is RUNNING
    assert fan_out_state((SUCCEEDED, SUCCEEDED)) is SUCCEEDED
    assert fan_out_state((SUCCEEDED, FAILED, RUNNING)) is FAILED
    assert fan_out_state((SUCCEEDED, CANCELLED)) is CANCELLED
    assert items_to_start((SUCCEEDED, RUNNING, PENDING, PENDING)) == (2, 3)
    assert items_to_start((FAILED, PENDING)) == ()
    assert items_to_cancel((FAILED, RUNNING, PENDING, PENDING)) == (2, 3)
    assert items_to_cancel((RUNNING, PENDING)) == ()


def test_a_failed_fan_out_keeps_the_run_open_while_its_items_are_at_the_agent() -> None:
    failing = StepProgress(FAILED, items=(SUCCEEDED, FAILED, RUNNING, CANCELLED))
    assert plan(FAN, {"list": done(), "each": failing}, None).status is None
    ended = StepProgress(FAILED, items=(SUCCEEDED, FAILED, SUCCEEDED, CANCELLED))
    assert plan(FAN, {"list": done(), "each": ended}, None).status is ExecutionStatus.FAILED


# --- retry -----------------------------------------------------------------------------------


def test_a_retry_runs_failed_and_never_started_steps_and_keeps_the_rest() -> None:
    graph = graph_of_steps(
        {"key": "a"},
        {"key": "skip", "when": "false"},
        {"key": "b", "needs": ["a"]},
        {"key": "c", "needs": ["b"]},
        {"key": "d"},
        {"key": "e"},
    )
    progress = {
        "a": done(),
        "skip": StepProgress(SKIPPED),
        "b": StepProgress(FAILED),
        "c": StepProgress(CANCELLED),
        "d": done(),
    }  # e never started
    again = retry(graph, progress)
    assert again.steps == ("e", "b", "c")  # in the order they can run
    assert again.items == {}


def test_a_retry_of_a_fan_out_runs_only_its_items_that_did_not_succeed() -> None:
    progress = {
        "list": done(),
        "each": StepProgress(FAILED, items=(SUCCEEDED, FAILED, CANCELLED, SUCCEEDED)),
    }
    again = retry(FAN, progress)
    assert (again.steps, dict(again.items)) == (("each",), {"each": (1, 2)})


def test_a_fan_out_that_failed_before_its_list_was_known_runs_again_whole() -> None:
    again = retry(FAN, {"list": done(), "each": StepProgress(FAILED, reason="no list")})
    assert (again.steps, dict(again.items)) == (("each",), {})


def test_a_retry_is_refused_while_the_run_runs_or_when_nothing_is_left() -> None:
    with pytest.raises(InvalidState, match="still running"):
        retry(
            DIAMOND, {"fetch": done(), "left": StepProgress(FAILED), "right": StepProgress(RUNNING)}
        )
    with pytest.raises(InvalidState, match="still running"):
        retry(FAN, {"list": done(), "each": StepProgress(FAILED, items=(FAILED, RUNNING))})
    with pytest.raises(InvalidState, match="nothing to retry"):
        retry(DIAMOND, {key: done() for key in ("fetch", "left", "right", "join")})


def test_a_step_can_be_built_directly_and_its_needs_are_what_it_waits_for() -> None:
    step = GraphStep(key="j", message="m", needs=("a",), optional_needs=("b",))
    assert step.waits_for == ("a", "b")


def test_graph_of_reads_a_stored_list_as_a_chain_and_a_keyed_one_as_its_graph() -> None:
    # given today's stored steps (no keys) and a stored graph (keys)
    linear = [{"name": "One", "message": "a {{ b }}"}, {"name": "Two", "message": "c"}]
    keyed = [
        {"key": "research", "message": "look {{ input.topic }}"},
        {"key": "sum", "message": "sum", "needs": ["research"], "timeout_s": 9},
    ]
    # then the first is the chain of those steps, messages sent exactly as written
    assert not is_graph(linear) and is_graph(keyed)
    assert graph_of(linear) == chain([Step("One", "a {{ b }}"), Step("Two", "c")])
    # and the second is the graph its plain form describes, read back losslessly
    graph = graph_of(keyed)
    assert [s.key for s in graph.order] == ["research", "sum"]
    assert to_data(graph) == keyed
    # and stored data not even of the right types is refused naming the step
    with pytest.raises(ValidationFailed, match="step sum's needs must be a list"):
        graph_of([{"key": "a", "message": "x"}, {"key": "sum", "message": "y", "needs": "a"}])


# --- steps that wait: async, approval, sleep -------------------------------------------------


def test_the_waiting_kinds_survive_the_round_trip_with_their_settings() -> None:
    data = [
        {"key": "job", "message": "Transcribe {{ input.url }}", "kind": "async", "timeout_s": 7200},
        {
            "key": "ok",
            "needs": ["job"],
            "message": "Publish {{ steps.job.output.title }}?",
            "kind": "approval",
            "timeout_s": 3600,
            "approvers": "admin",
            "on_reject": "skip",
            "on_timeout": "approve",
        },
        {"key": "pause", "needs": ["ok"], "kind": "sleep", "sleep_s": 600},
        {"key": "until", "needs": ["pause"], "kind": "sleep", "sleep_until": "{{ input.at }}"},
    ]
    graph = parse_graph(data, egress=EGRESS)
    assert to_data(graph) == data
    assert parse_graph(to_data(graph), egress=EGRESS) == graph
    approval = graph.by_key["ok"]
    assert (approval.kind, approval.approvers, approval.on_reject, approval.on_timeout) == (
        StepKind.APPROVAL,
        "admin",
        "skip",
        "approve",
    )
    # an approval's timeout defaults to a day, an async step's to the automation's
    assert graph_of_steps({"key": "a", "kind": "approval"}).steps[0].wait_s(30) == 86_400
    assert graph_of_steps({"key": "a", "kind": "async"}).steps[0].wait_s(30) == 30


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"key": "nap", "kind": "sleep"},
            "step nap is a sleep: give exactly one of sleep_s (seconds) and sleep_until",
        ),
        (
            {"key": "nap", "kind": "sleep", "sleep_s": 5, "sleep_until": "{{ input.at }}"},
            "step nap is a sleep: give exactly one of sleep_s",
        ),
        ({"key": "nap", "kind": "sleep", "sleep_s": 0}, "step nap's sleep_s must be between 1 and"),
        (
            {"key": "nap", "kind": "sleep", "sleep_s": 7 * 86400 + 1},
            "step nap's sleep_s must be between 1 and 604800 seconds",
        ),
        ({"key": "nap", "kind": "sleep", "sleep_s": "5"}, "step nap's sleep_s must be a whole"),
        (
            {"key": "nap", "kind": "sleep", "sleep_until": "{{ steps.other.output }}"},
            "step nap's sleep_until reads steps.other",
        ),
        (
            {"key": "nap", "kind": "sleep", "sleep_s": 5, "message": "hello"},
            "step nap is a sleep: it sends no message",
        ),
        (
            {"key": "nap", "kind": "sleep", "sleep_s": 5, "agent_url": "https://a.example.com"},
            "step nap is a sleep (no call to the agent): it cannot have agent_url",
        ),
        (
            {"key": "nap", "kind": "sleep", "sleep_s": 5, "for_each": "input.ids"},
            "step nap is a sleep (no call to the agent): it cannot have for_each",
        ),
        (
            {"key": "ok", "kind": "approval", "message": "m", "for_each": "input.ids"},
            "step ok is an approval (no call to the agent: a person decides): it cannot have "
            "for_each",
        ),
        (
            {"key": "ok", "kind": "approval", "message": "m", "approvers": "viewer"},
            "step ok's approvers must be editor or admin",
        ),
        (
            {"key": "ok", "kind": "approval", "message": "m", "on_reject": "retry"},
            "step ok's on_reject must be fail or skip",
        ),
        (
            {"key": "ok", "kind": "approval", "message": "m", "on_timeout": "wait"},
            "step ok's on_timeout must be reject or approve",
        ),
        ({"key": "ok", "kind": "approval"}, "step ok's message must be a non-empty text"),
        (
            {"key": "ok", "kind": "approval", "message": "m", "timeout_s": 7 * 86400 + 1},
            "step ok's timeout_s must be between 1 and 604800 seconds (7 days) for an approval",
        ),
        (
            {"key": "job", "kind": "async", "message": "m", "for_each": "input.ids"},
            "step job is an async call (one wait for one callback: no for_each): it cannot have "
            "for_each",
        ),
        (
            {"key": "job", "kind": "async", "message": "m", "sleep_s": 5},
            "step job is an async call (one wait for one callback: no for_each): it cannot have "
            "sleep_s",
        ),
        (
            {"key": "job", "message": "m", "timeout_s": 7200},
            "step job's timeout_s must be between 1 and 3600 seconds",
        ),
        (
            {"key": "job", "message": "m", "on_timeout": "approve"},
            "step job is a call: it cannot have on_timeout",
        ),
    ],
)
def test_a_waiting_step_is_checked_at_save_with_messages_naming_it(
    step: dict[str, Any], message: str
) -> None:
    found = refusals([step])
    assert any(message in text for text in found), found


def test_an_async_step_may_wait_up_to_seven_days_where_a_call_may_not() -> None:
    (step,) = graph_of_steps({"key": "job", "kind": "async", "timeout_s": 7 * 86400}).steps
    assert step.timeout_s == 7 * 86400


def test_a_waiting_step_holds_back_its_dependents_and_the_runs_end() -> None:
    graph = graph_of_steps(
        {"key": "ok", "kind": "approval"}, {"key": "send", "needs": ["ok"]}, {"key": "other"}
    )
    waiting = StepProgress(StepState.WAITING)
    # while the approval waits, its dependent does not start and the run is not over
    found = plan(graph, {"ok": waiting, "other": done()}, None)
    assert found.start == () and found.status is None
    # once approved, the dependent starts
    assert plan(graph, {"ok": done({"approved": True}), "other": done()}, None).start == ("send",)
