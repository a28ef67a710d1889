"""Workflow graphs: an automation's steps with keys and needs, checked once, and what runs next.

A step has a key (a slug, unique in its automation) and `needs`, the keys it waits for;
a step with none is a root. It starts when every step it waits for has ended well; steps
that do not wait for each other run at the same time. `chain` makes today's list of steps
a graph, each step needing the one before.

**What a template may read.** A step's message, input, `when` and `for_each` read `input`
(the run's input) and `steps.<key>.output` for the keys it needs directly, and a fan-out
step's message and input read `item` and `index` too. Never a step further up: what a
step reads is then always drawn as an edge of the graph (the graph view and the edit that
removes a step tell the truth), a skipped step further up can never be read by surprise,
and the call carries the outputs of its needs and nothing more. A step that wants an
output from further up names that step among its needs too (it has ended already, so this
costs no time).

**Conditions and skips.** A step whose `when` is false is `skipped`, with the reason. A
step that needs a skipped step is skipped too, unless it lists that step among its
`optional_needs`: then it runs, and reads that step's output as none.

**Failure.** A step fails for good when its retries are spent or no retry could help (a
`when`, a `for_each` or a template that cannot be evaluated fails at once). Then:
- every step not started yet is `cancelled`, and nothing starts any more;
- steps already running finish, and what they answer is kept: a call at the agent is not
  cut midway (the agent may already have acted on it), and a retry then need not repeat
  it; the run ends `failed` when the last of them ends;
- a fan-out fails when one of its items fails for good; its items not started are
  cancelled, those at the agent finish.
A person's cancel is the other way to end early: the engine cuts what runs and marks every
open step `cancelled`; the run ends `cancelled`.

**Retry.** A retry of a failed (or cancelled) run runs again every step that did not end
well — failed, cancelled, never started — and keeps the outputs of those that succeeded and
the skips (their conditions read outputs that are kept, so they would decide the same). A
fan-out keeps its list of items and runs again only the items that did not succeed.

**Fan-out.** `for_each` is an expression over `input` and the outputs of the needs; it must
give a list of at most MAX_ITEMS items. Each item is its own call with its own idempotency
key, `<execution_id>:<step_key>:<index>`, and retry; the step's output is the list of its
items' outputs, in order (an empty list: the step succeeds at once with `[]`).

**Kinds.** A step's `kind` says what it does; the three that wait do so without a worker
(docs/RELIABILITY.md, "Waits"): the run is parked while only they are open.
- `call` (the default): one call to the agent (one per item of a fan-out).
- `async`: a call whose agent may answer `202 Accepted` and POST the result later to the
  `callback_url` its body carries; `timeout_s` (up to MAX_WAIT_S) covers the whole wait,
  and no callback within it fails the step. Any other 2xx is an answer now, as a call's.
  No `for_each`: each item would be a wait of its own, with no engine to gather them yet.
- `approval`: no call; a person whose role is at least `approvers` (editor, the default,
  or admin) approves or rejects, reading the step's rendered `message`. A rejection fails
  the step (`on_reject: fail`, the default) or skips it (`skip`); no decision within
  `timeout_s` (DEFAULT_APPROVAL_TIMEOUT_S unless given) decides by `on_timeout` (`reject`,
  the default, or `approve`). Approved, its output is `{"approved": true, "by", "comment"}`.
- `sleep`: no call and no message; waits `sleep_s` seconds or until `sleep_until` (a
  template over input and needs giving an ISO 8601 instant with its offset), computed once
  when the step starts; its output is `{"slept_until": <instant>}`.

Limits: MAX_STEPS steps, MAX_NEEDS needs a step. Depth and the dependents of a step are
bounded by MAX_STEPS alone: a chain of MAX_STEPS steps is an automation of today.
"""

from __future__ import annotations

import dataclasses
import functools
import graphlib
import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.automation import Step, header_problems, url_problem
from core.egress import EgressPolicy
from core.errors import FieldError, InvalidState, ValidationFailed
from core.limits import (
    DEFAULT_APPROVAL_TIMEOUT_S,
    MAX_EXPRESSION,
    MAX_ITEMS,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_NEEDS,
    MAX_RETRIES,
    MAX_STEP_KEY,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MAX_WAIT_S,
    MIN_STEP_TIMEOUT_S,
)
from core.run_input import parse_run_input
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
from core.text import UNSTORABLE, storable_value
from core.vocabulary import (
    ExecutionStatus,
    OnReject,
    OnTimeout,
    Role,
    StepKind,
    StepState,
    one_of,
)

FIELD = "steps"
KEY = re.compile(r"[a-z][a-z0-9_]*")
_KEY_RULE = (
    f"a slug: lower-case letters, digits and _, starting with a letter, at most {MAX_STEP_KEY} "
    "characters"
)


@dataclass(frozen=True)
class GraphStep:
    """One step of a graph. None in a per-step setting means the automation's."""

    key: str
    message: str  # a template (core.templates)
    name: str = ""  # shown on pages; a chain's steps keep their names
    needs: tuple[str, ...] = ()
    optional_needs: tuple[str, ...] = ()  # waited for too; their skip does not skip this step
    # The call's input: a JSON object whose texts are templates; None: the run's input.
    input: dict[str, Any] | None = None
    when: str | None = None  # an expression: false skips the step
    for_each: str | None = None  # an expression giving a list: one call per item
    kind: StepKind = StepKind.CALL
    agent_url: str | None = None
    timeout_s: int | None = None
    max_retries: int | None = None
    request_headers: tuple[tuple[str, str], ...] | None = None
    # A sleep's length, or the template of the instant it ends (exactly one of the two).
    sleep_s: int | None = None
    sleep_until: str | None = None
    # An approval's: the weakest role that may decide, and its policies (None: the default).
    approvers: Role | None = None
    on_reject: OnReject | None = None
    on_timeout: OnTimeout | None = None

    @property
    def waits_for(self) -> tuple[str, ...]:
        return self.needs + self.optional_needs

    def wait_s(self, automation_timeout_s: int) -> int:
        """How long an async step waits for its callback (its timeout_s, else the
        automation's step timeout), or an approval for a decision."""
        if self.timeout_s is not None:
            return self.timeout_s
        if self.kind is StepKind.APPROVAL:
            return DEFAULT_APPROVAL_TIMEOUT_S
        return automation_timeout_s


@dataclass(frozen=True)
class Graph:
    """The steps of an automation, checked (`parse_graph`, `chain`) and trusted after."""

    steps: tuple[GraphStep, ...]

    @functools.cached_property
    def by_key(self) -> dict[str, GraphStep]:
        return {step.key: step for step in self.steps}

    @functools.cached_property
    def order(self) -> tuple[GraphStep, ...]:
        """Every step after the steps it waits for: those that wait for nothing first, in the
        order written, then those they free, and so on."""
        sorter = graphlib.TopologicalSorter({s.key: s.waits_for for s in self.steps})
        rank = {step.key: number for number, step in enumerate(self.steps)}
        sorter.prepare()
        ordered: list[GraphStep] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=rank.__getitem__)
            ordered += [self.by_key[key] for key in ready]
            sorter.done(*ready)
        return tuple(ordered)


def chain(steps: Sequence[Step]) -> Graph:
    """Today's steps as a graph: keys step_1, step_2, ..., each needing the one before; the
    messages are sent exactly as written (`core.templates.literal`)."""
    return Graph(
        tuple(
            GraphStep(
                key=f"step_{number}",
                name=step.name,
                message=literal(step.message),
                needs=(f"step_{number - 1}",) if number > 1 else (),
            )
            for number, step in enumerate(steps, start=1)
        )
    )


def is_graph(steps_data: Sequence[Any]) -> bool:
    """Whether an automation's stored `steps` are a graph (its steps have keys) rather than
    today's list of steps (name and message, no key: a chain)."""
    return bool(steps_data) and isinstance(steps_data[0], dict) and "key" in steps_data[0]


def graph_of(steps_data: Sequence[Any]) -> Graph:
    """The graph of an automation's stored `steps` (its `steps` column): a list whose steps
    have no key is today's linear automation, `chain`; one whose steps have keys is a graph
    in the plain form (`to_data`).

    A stored graph was checked whole at save (`parse_graph`), so it is trusted here: only the
    fields' types are read again, and a step's templates, per-step settings and structure
    are not checked a second time (a run would pay for it on every claim). A per-step
    agent_url is still guarded at call time, by the worker's egress guard, as the
    automation's. Stored data that is not even that (written around the save path) raises
    ValidationFailed naming the step."""
    if not is_graph(steps_data):
        return chain([Step(str(step["name"]), str(step["message"])) for step in steps_data])
    problems = _Problems()
    steps = [_step(number, item, problems) for number, item in enumerate(steps_data, start=1)]
    if problems.errors:
        raise ValidationFailed(problems.errors)
    return Graph(tuple(step for step in steps if step is not None))


# --- the plain form (YAML, the API) ----------------------------------------------------------


_FIELDS = tuple(f.name for f in dataclasses.fields(GraphStep))  # the plain form's, in order


_DEFAULT = GraphStep(key="", message="")


def to_data(graph: Graph) -> list[dict[str, Any]]:
    """The graph in its plain form: a list of objects, each without the fields it leaves at
    their defaults. `parse_graph` reads it back to the same graph."""
    data = []
    for step in graph.steps:
        item: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(step, name)
            if value == getattr(_DEFAULT, name) and name not in ("key", "message"):
                continue
            if name == "message" and step.kind is StepKind.SLEEP and not value:
                continue  # a sleep has none
            if name in ("needs", "optional_needs"):
                value = list(value)
            elif name == "request_headers":
                value = dict(value)
            elif name in ("kind", "approvers", "on_reject", "on_timeout"):
                value = str(value)
            item[name] = value
        data.append(item)
    return data


class _Problems:
    """The problems found so far, each a FieldError on `steps` naming its step."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, message: str) -> None:
        self.errors.append(FieldError(FIELD, message))


def parse_graph(data: Any, *, egress: EgressPolicy) -> Graph:
    """The graph of the plain form `data` (a list of step objects), checked whole:
    ValidationFailed lists every problem, each naming its steps. `egress` decides which
    per-step agent URLs are acceptable, as for the automation's."""
    problems = _Problems()
    if not isinstance(data, list) or not data:
        problems.add("must be a list of at least one step")
        raise ValidationFailed(problems.errors)
    if len(data) > MAX_STEPS:
        problems.add(f"at most {MAX_STEPS} steps (got {len(data)})")
        raise ValidationFailed(problems.errors)
    steps = [_step(number, item, problems) for number, item in enumerate(data, start=1)]
    if problems.errors:
        raise ValidationFailed(problems.errors)
    graph = Graph(tuple(step for step in steps if step is not None))
    _check_structure(graph, problems)
    if not problems.errors:
        for step in graph.steps:
            _check_step(step, problems, egress)
    if problems.errors:
        raise ValidationFailed(problems.errors)
    return graph


def _step(number: int, item: Any, problems: _Problems) -> GraphStep | None:
    """One step of the plain form, its fields' types checked; None (and problems) if not."""
    if not isinstance(item, dict):
        problems.add(f"step {number} must be an object with a key and a message")
        return None
    key = item.get("key")
    if not isinstance(key, str) or not KEY.fullmatch(key) or len(key) > MAX_STEP_KEY:
        problems.add(f"step {number}'s key {key!r} must be {_KEY_RULE}")
        return None
    before = len(problems.errors)
    unknown = sorted(set(item) - set(_FIELDS), key=str)
    if unknown:
        problems.add(f"step {key} has unknown fields: {', '.join(map(str, unknown))}")

    def text(name: str, *, required: bool = False) -> str | None:
        value = item.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            problems.add(f"step {key}'s {name} must be {'a non-empty' if required else 'a'} text")
            return None
        return value

    def keys(name: str) -> tuple[str, ...]:
        value = item.get(name, [])
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            problems.add(f"step {key}'s {name} must be a list of step keys")
            return ()
        return tuple(value)

    def number_of(name: str) -> int | None:
        value = item.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.add(f"step {key}'s {name} must be a whole number")
            return None
        return value

    headers = item.get("request_headers")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    ):
        problems.add(f"step {key}'s request_headers must be a mapping of names to texts")
        headers = None
    kind = item.get("kind", StepKind.CALL)
    if kind not in [str(k) for k in StepKind]:
        problems.add(f"step {key}'s kind must be {one_of(StepKind)}")
        kind = StepKind.CALL

    def word(name: str, words: type[StrEnum], allowed: Sequence[str] | None = None) -> Any:
        value = item.get(name)
        choices = list(allowed or [str(w) for w in words])
        if value is None:
            return None
        if value not in choices:
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
            problems.add(f"step {key}'s {name} must be {listed}")
            return None
        return words(value)

    if item.get("input") is not None and not isinstance(item["input"], dict):
        problems.add(f"step {key}'s input must be an object (whose texts are templates)")
    step = GraphStep(
        key=key,
        message=text("message", required=kind != StepKind.SLEEP) or "",
        name=text("name") or "",
        needs=keys("needs"),
        optional_needs=keys("optional_needs"),
        input=item.get("input"),
        when=text("when"),
        for_each=text("for_each"),
        kind=StepKind(kind),
        agent_url=text("agent_url"),
        timeout_s=number_of("timeout_s"),
        max_retries=number_of("max_retries"),
        request_headers=None if headers is None else tuple(headers.items()),
        sleep_s=number_of("sleep_s"),
        sleep_until=text("sleep_until"),
        approvers=word("approvers", Role, (Role.EDITOR, Role.ADMIN)),
        on_reject=word("on_reject", OnReject),
        on_timeout=word("on_timeout", OnTimeout),
    )
    return step if len(problems.errors) == before else None


def _check_structure(graph: Graph, problems: _Problems) -> None:
    """Duplicate keys, needs that are no step or the step itself, too many needs, cycles."""
    seen: set[str] = set()
    for key in (step.key for step in graph.steps):
        if key in seen:
            problems.add(f"two steps have the key {key}")
        seen.add(key)
    for step in graph.steps:
        waits = step.waits_for
        if len(waits) > MAX_NEEDS:
            problems.add(f"step {step.key} needs {len(waits)} steps (at most {MAX_NEEDS})")
            continue
        for need, count in sorted(Counter(waits).items()):
            if count > 1:
                problems.add(f"step {step.key} lists {need} more than once in its needs")
        if step.key in waits:
            problems.add(f"step {step.key} needs itself")
        for need in waits:
            if need not in seen:
                problems.add(f"step {step.key} needs {need}, which is not a step")
    if problems.errors:
        return  # a cycle through a missing step or a step twice would only confuse
    try:
        graph.order  # noqa: B018  (sorting finds the cycle)
    except graphlib.CycleError as cycle:
        path = list(reversed(cycle.args[1]))  # [a, b, ..., a]: each needs the next
        needs = [f"{step} needs {need}" for step, need in itertools.pairwise(path)]
        problems.add(
            f"steps {_listed(sorted(set(path)))} wait for each other in a cycle "
            f"({_listed(needs)}): remove one of these needs"
        )


def _listed(words: Sequence[str]) -> str:
    """ "a, b and c"."""
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else words[0]


def _check_step(step: GraphStep, problems: _Problems, egress: EgressPolicy) -> None:
    """A step's texts, templates and own settings."""
    key = step.key
    if len(step.name) > MAX_NAME:
        problems.add(f"step {key}'s name is over {MAX_NAME} characters")
    if step.input is not None and (wrong := _input_problem(step.input)):
        problems.add(f"step {key}'s input {wrong}")
        return
    if not storable_value([step.name, step.message, step.when, step.for_each]):
        problems.add(f"step {key} {UNSTORABLE}")
        return
    per_call = {"input", "item", "index"} if step.for_each is not None else {"input"}
    for what, source, expression in _templates_of(step, problems):
        names = per_call if what == "message" else {"input"}
        for problem in template_problems(
            source, expression=expression, steps=step.waits_for, names=names
        ):
            problems.add(f"step {key}'s {what} {problem}")
    for problem in input_problems(step.input, steps=step.waits_for, names=per_call):
        problems.add(f"step {key}'s input {problem}")
    if step.agent_url is not None and (wrong := url_problem(step.agent_url, egress)):
        problems.add(f"step {key}'s agent_url {wrong}")
    if step.kind is StepKind.CALL and (
        step.timeout_s is not None
        and not MIN_STEP_TIMEOUT_S <= step.timeout_s <= MAX_STEP_TIMEOUT_S
    ):
        problems.add(
            f"step {key}'s timeout_s must be between {MIN_STEP_TIMEOUT_S} and "
            f"{MAX_STEP_TIMEOUT_S} seconds, or left out (the automation's)"
        )
    _check_kind(step, problems)
    if step.max_retries is not None and not 0 <= step.max_retries <= MAX_RETRIES:
        problems.add(
            f"step {key}'s max_retries must be between 0 and {MAX_RETRIES}, "
            "or left out (the automation's)"
        )
    for problem in header_problems(step.request_headers or ()):
        problems.add(f"step {key}'s request_headers: {problem}")


# The fields each kind of step may not have (beyond key, name, needs, when and message).
_CALL_ONLY = ("input", "agent_url", "max_retries", "request_headers")
_SLEEP_ONLY = ("sleep_s", "sleep_until")
_APPROVAL_ONLY = ("approvers", "on_reject", "on_timeout")
_NOT_OF_KIND = {
    StepKind.CALL: (*_SLEEP_ONLY, *_APPROVAL_ONLY),
    StepKind.ASYNC: ("for_each", *_SLEEP_ONLY, *_APPROVAL_ONLY),
    StepKind.APPROVAL: ("for_each", *_CALL_ONLY, *_SLEEP_ONLY),
    StepKind.SLEEP: ("for_each", "timeout_s", *_CALL_ONLY, *_APPROVAL_ONLY),
}
_WHY_NOT = {
    StepKind.CALL: "a call",
    StepKind.ASYNC: "an async call (one wait for one callback: no for_each)",
    StepKind.APPROVAL: "an approval (no call to the agent: a person decides)",
    StepKind.SLEEP: "a sleep (no call to the agent)",
}


def _check_kind(step: GraphStep, problems: _Problems) -> None:
    """The fields of a step that its kind has no use for, and the settings of the kinds that
    wait (`async`, `approval`, `sleep`)."""
    key, kind = step.key, step.kind
    extra = [name for name in _NOT_OF_KIND[kind] if getattr(step, name) is not None]
    if extra:
        problems.add(f"step {key} is {_WHY_NOT[kind]}: it cannot have {_listed(extra)}")
    waited = (MIN_STEP_TIMEOUT_S, MAX_WAIT_S)
    if (
        kind in (StepKind.ASYNC, StepKind.APPROVAL)
        and step.timeout_s is not None
        and not waited[0] <= step.timeout_s <= waited[1]
    ):
        problems.add(
            f"step {key}'s timeout_s must be between {waited[0]} and {waited[1]} seconds "
            f"({MAX_WAIT_S // 86400} days) for an {kind} step, or left out"
        )
    if kind is StepKind.SLEEP:
        if step.message:
            problems.add(f"step {key} is a sleep: it sends no message (leave message out)")
        if (step.sleep_s is None) == (step.sleep_until is None):
            problems.add(
                f"step {key} is a sleep: give exactly one of sleep_s (seconds) and "
                "sleep_until (an instant)"
            )
        if step.sleep_s is not None and not 1 <= step.sleep_s <= MAX_WAIT_S:
            problems.add(f"step {key}'s sleep_s must be between 1 and {MAX_WAIT_S} seconds")
        if step.sleep_until is not None:
            if len(step.sleep_until) > MAX_EXPRESSION:
                problems.add(f"step {key}'s sleep_until is over {MAX_EXPRESSION} characters")
                return
            for problem in template_problems(
                step.sleep_until, expression=False, steps=step.waits_for, names={"input"}
            ):
                problems.add(f"step {key}'s sleep_until {problem}")


def sleep_end(step: GraphStep, run_input: Any, progress: Mapping[str, StepProgress]) -> datetime:
    """The instant a `sleep_until` step ends: its template rendered and read as an ISO 8601
    instant with an offset. TemplateError (which fails the step) when it is none."""
    assert step.sleep_until is not None
    what = f"The sleep_until of step {step.key}"
    rendered = render_text(step.sleep_until, variables(step, run_input, progress), what=what)
    try:
        instant = datetime.fromisoformat(rendered.strip())
    except ValueError:
        raise TemplateError(
            f"{what} gave {rendered[:100]!r}, not an ISO 8601 instant "
            "(such as 2026-12-24T18:00:00+01:00)"
        ) from None
    if instant.tzinfo is None:
        raise TemplateError(
            f"{what} gave {rendered[:100]!r}, an instant without its offset: add one "
            "(such as +00:00 or Z)"
        )
    return instant


def _input_problem(template: dict[str, Any]) -> str | None:
    """Why an input template could not be stored as a run's input (`core.run_input`: its
    size, depth and texts), or None."""
    try:
        parse_run_input(template, field=FIELD)
    except ValidationFailed as refused:
        return refused.errors[0].message
    except TypeError:  # a value JSON has no word for, such as a date read from YAML
        return "must hold only texts, numbers, true, false, null, lists and objects"
    return None


def _templates_of(step: GraphStep, problems: _Problems) -> list[tuple[str, str, bool]]:
    """(what, source, is an expression) for the message, `when` and `for_each` of `step` short
    enough to check; a problem for each of the others."""
    found: list[tuple[str, str, bool]] = []
    if len(step.message) > MAX_MESSAGE:
        problems.add(f"step {step.key}'s message is over {MAX_MESSAGE} characters")
    else:
        found.append(("message", step.message, False))
    for what, source in (("when", step.when), ("for_each", step.for_each)):
        if source is None:
            continue
        if len(source) > MAX_EXPRESSION:
            problems.add(f"step {step.key}'s {what} is over {MAX_EXPRESSION} characters")
        else:
            found.append((what, source, True))
    return found


# --- a run of the graph ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepProgress:
    """Where one step of a run stands."""

    state: StepState = StepState.PENDING
    output: Any = None  # a succeeded step's answer (a fan-out's: its items' answers, in order)
    reason: str | None = None  # why it was skipped, failed or cancelled
    items: tuple[StepState, ...] = ()  # a fan-out's items, in order, once its list is known

    @property
    def calling(self) -> bool:
        """Some of its calls are at the agent: it runs, or it failed while items still run."""
        return self.state is StepState.RUNNING or StepState.RUNNING in self.items


_PENDING = StepProgress()


@dataclass(frozen=True)
class Plan:
    """What to do now in a run: the engine applies it whole, then asks again when a step ends."""

    start: tuple[str, ...] = ()  # steps whose needs have all ended well, in graph order
    skip: Mapping[str, str] = field(default_factory=dict)  # key: why
    fail: Mapping[str, str] = field(default_factory=dict)  # a `when` that could not be evaluated
    cancel: Mapping[str, str] = field(default_factory=dict)  # never started: why
    status: ExecutionStatus | None = None  # the run's end, once nothing is left open


def variables(
    step: GraphStep,
    run_input: Any,
    progress: Mapping[str, StepProgress],
    *,
    item: Any = None,
    index: int | None = None,
) -> dict[str, Any]:
    """What `step`'s templates may read: `input`, `steps.<need>.output` (none for a need
    skipped) and, for an item of a fan-out, `item` and `index`."""
    found: dict[str, Any] = {
        "input": run_input,
        "steps": {key: {"output": progress.get(key, _PENDING).output} for key in step.waits_for},
    }
    if index is not None:
        found |= {"item": item, "index": index}
    return found


def plan(graph: Graph, progress: Mapping[str, StepProgress], run_input: Any) -> Plan:
    """What to do next, given where each step stands (a key missing from `progress` is
    pending): which steps start, which are skipped (a `when` false, a need skipped that is not
    optional) and why, which fail (a `when` that cannot be evaluated), which are cancelled
    (everything not started, once a step has failed), and the run's status once nothing is
    left open. Skips follow each other through the graph in one plan."""
    states = {step.key: progress.get(step.key, _PENDING).state for step in graph.steps}
    start: list[str] = []
    skip: dict[str, str] = {}
    fail: dict[str, str] = {}
    cancel: dict[str, str] = {}
    reasons = {StepState.SKIPPED: skip, StepState.FAILED: fail, StepState.CANCELLED: cancel}
    for step in graph.order:
        if states[step.key] is not StepState.PENDING:
            continue
        waiting = [states[key] for key in step.waits_for]
        if any(not state.is_final for state in waiting):
            continue  # a need pending, running or waiting
        decided = _decide(step, states, progress, run_input)
        if decided is None:
            start.append(step.key)
            states[step.key] = StepState.RUNNING
            continue
        state, reason = decided
        states[step.key] = state
        reasons[state][step.key] = reason
    if failed := [key for key, state in states.items() if state is StepState.FAILED]:
        for key in [*start, *(k for k, s in states.items() if s is StepState.PENDING)]:
            cancel[key] = f"not started: step {failed[0]} failed"
            states[key] = StepState.CANCELLED
        start = []
    return Plan(tuple(start), skip, fail, cancel, _status(states, progress))


def _decide(
    step: GraphStep,
    states: Mapping[str, StepState],
    progress: Mapping[str, StepProgress],
    run_input: Any,
) -> tuple[StepState, str] | None:
    """Why a step whose needs have all ended does not start (its new state and the reason),
    or None: it starts."""
    for key in step.waits_for:
        if states[key] in (StepState.FAILED, StepState.CANCELLED):
            return StepState.CANCELLED, f"not started: step {key} {states[key]}"
    for key in step.needs:
        if states[key] is StepState.SKIPPED:
            return StepState.SKIPPED, f"step {key} was skipped"
    if step.when is None:
        return None
    what = f"The condition of step {step.key}"
    try:
        if condition(step.when, variables(step, run_input, progress), what=what):
            return None
    except TemplateError as exc:
        return StepState.FAILED, str(exc)
    return StepState.SKIPPED, f"its condition is false: {step.when}"


def _status(
    states: Mapping[str, StepState], progress: Mapping[str, StepProgress]
) -> ExecutionStatus | None:
    if any(not s.is_final for s in states.values()):
        return None
    if any(p.calling for p in progress.values()):
        return None  # a failed fan-out's items still at the agent
    if StepState.FAILED in states.values():
        return ExecutionStatus.FAILED
    if StepState.CANCELLED in states.values():
        return ExecutionStatus.CANCELLED
    return ExecutionStatus.SUCCEEDED


# --- fan-out ---------------------------------------------------------------------------------


def items_of(step: GraphStep, run_input: Any, progress: Mapping[str, StepProgress]) -> list[Any]:
    """The items of a fan-out step: its `for_each` evaluated, a list of at most MAX_ITEMS.
    TemplateError (which fails the step) when it cannot be evaluated or is no such list."""
    assert step.for_each is not None
    what = f"The for_each of step {step.key}"
    found = evaluate(step.for_each, variables(step, run_input, progress), what=what)
    if not isinstance(found, list):
        kind = "an object" if isinstance(found, dict) else f"a {type(found).__name__}"
        raise TemplateError(f"{what} is {kind}, not a list")
    if len(found) > MAX_ITEMS:
        raise TemplateError(f"{what} has {len(found):,} items (at most {MAX_ITEMS:,})")
    return found


def fan_out_state(items: Sequence[StepState]) -> StepState:
    """A fan-out step's state from its items': failed as soon as one failed for good (its
    items at the agent still finish: `StepProgress.calling`), succeeded when all did (an
    empty list too), cancelled when a person cut one, else running."""
    if StepState.FAILED in items:
        return StepState.FAILED
    if all(state is StepState.SUCCEEDED for state in items):
        return StepState.SUCCEEDED
    if StepState.CANCELLED in items:
        return StepState.CANCELLED
    return StepState.RUNNING


def items_to_start(items: Sequence[StepState]) -> tuple[int, ...]:
    """The items of a fan-out that may start now: the pending ones, unless one has failed for
    good (then none; `items_to_cancel` says which are cancelled)."""
    if StepState.FAILED in items or StepState.CANCELLED in items:
        return ()
    return tuple(i for i, state in enumerate(items) if state is StepState.PENDING)


def items_to_cancel(items: Sequence[StepState]) -> tuple[int, ...]:
    """The pending items of a fan-out whose step has failed or been cancelled."""
    if StepState.FAILED not in items and StepState.CANCELLED not in items:
        return ()
    return tuple(i for i, state in enumerate(items) if state is StepState.PENDING)


def call_key(execution_id: object, step_key: str, index: int | None = None) -> str:
    """The idempotency key of one call: `<execution_id>:<step_key>`, and `:<index>` for an
    item of a fan-out. The same call retried keeps its key."""
    return f"{execution_id}:{step_key}" if index is None else f"{execution_id}:{step_key}:{index}"


@dataclass(frozen=True)
class Call:
    """What one call of a step sends, rendered."""

    message: str
    input: Any


def render_call(
    step: GraphStep,
    run_input: Any,
    progress: Mapping[str, StepProgress],
    *,
    item: Any = None,
    index: int | None = None,
) -> Call:
    """The message and input of one call of `step` (of item `index` of a fan-out): the input
    is the run's when the step has no input template. TemplateError fails the step."""
    scope = variables(step, run_input, progress, item=item, index=index)
    where = f"step {step.key}" if index is None else f"step {step.key} (item {index})"
    message = render_text(step.message, scope, what=f"The message of {where}")
    if step.input is None:
        return Call(message, run_input)
    return Call(message, render_value(step.input, scope, what=f"The input of {where}"))


# --- retry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """What a retry runs again: whole steps, and of fan-outs only some items. A step in
    `items` resumes running with those items pending: its `when` and `for_each` are not
    evaluated again (its list stays the one its done items belong to); the other steps
    become pending."""

    steps: tuple[str, ...]  # in graph order
    items: Mapping[str, tuple[int, ...]]  # a fan-out whose list is known: the items to run


def retry(graph: Graph, progress: Mapping[str, StepProgress]) -> Retry:
    """What a retry of an ended run runs again: every step failed, cancelled or never started
    (a fan-out whose list is known: only its items that did not succeed); succeeded and
    skipped steps are kept. InvalidState if the run is still open or nothing is left to run."""
    if any(p.calling for p in progress.values()):
        raise InvalidState("the run is still running: cancel it or wait for its end")
    again: list[str] = []
    items: dict[str, tuple[int, ...]] = {}
    for step in graph.order:
        state = progress.get(step.key, _PENDING)
        if state.state in (StepState.SUCCEEDED, StepState.SKIPPED):
            continue
        again.append(step.key)
        if state.items:
            items[step.key] = tuple(
                i for i, item in enumerate(state.items) if item is not StepState.SUCCEEDED
            )
    if not again:
        raise InvalidState("every step succeeded or was skipped: there is nothing to retry")
    return Retry(tuple(again), items)


# --- a run as the run page shows it ----------------------------------------------------------


@dataclass(frozen=True)
class ShownStep:
    """Where one step of a run stands as its page shows it, and why (skipped, cancelled or
    failed)."""

    state: StepState
    reason: str | None = None


def shown_states(graph: Graph, rows: Sequence[Any], *, ended: bool) -> dict[str, ShownStep]:
    """Each step's state from a run's step runs (oldest first; each with `step_key`, `item`,
    `status`, `error`): its latest own row (item None: the call, or a fan-out's own row),
    else its items' latest rows. A step without a row is pending, or cancelled once the run
    has `ended` (it never started)."""
    own: dict[str, Any] = {}
    items: dict[str, dict[int, Any]] = {}
    for row in rows:
        if row.item is None:
            own[row.step_key] = row
        else:
            items.setdefault(row.step_key, {})[row.item] = row
    found: dict[str, ShownStep] = {}
    for step in graph.steps:
        top = own.get(step.key)
        if top is not None:
            found[step.key] = ShownStep(StepState(top.status), top.error)
        elif step.key in items:
            latest = items[step.key]
            state = fan_out_state([StepState(r.status) for r in latest.values()])
            found[step.key] = ShownStep(state)
        elif ended:
            found[step.key] = ShownStep(StepState.CANCELLED, "never started: the run ended")
        else:
            found[step.key] = ShownStep(StepState.PENDING)
    return found
