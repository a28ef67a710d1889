"""An automation's steps drawn as a graph (`st.graphviz_chart`): steps, needs, conditions, fan-outs.

`dot` writes the DOT text, a pure function; `show` draws it. Every text of a step (its
name, key, condition, list) reaches the drawing as a quoted DOT string with its quotes and
backslashes escaped, so that it is shown as typed: never a DOT escape (`\\N`, `\\l`), an
HTML label or an attribute. `states` colours the steps by where a run stands (the run page),
`legend` is the key to those colours.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping

import streamlit as st

from core.graph import Graph, GraphStep
from core.vocabulary import Role, StepKind, StepState
from core.waits import role_phrase

# A node's text is wrapped at LINE characters, MAX_LINES lines a text (the rest as …):
# narrow nodes keep a graph legible on a phone, where the drawing is scaled to the screen.
LINE = 26
MAX_LINES = 2

# The legend's boxes a row: four of 0.8 in fit a phone's screen.
LEGEND_ROW = 4

# Fill colours by state (pale, so the text stays readable on every theme).
_FILL = {
    StepState.PENDING: "#f1f3f5",
    StepState.RUNNING: "#dbe4ff",
    StepState.WAITING: "#ffe8cc",  # pale orange, as the status `waiting` (ui.STATUS_COLORS)
    StepState.SUCCEEDED: "#d3f9d8",
    StepState.FAILED: "#ffe3e3",
    StepState.SKIPPED: "#fff3bf",
    StepState.CANCELLED: "#ced4da",  # darker than pending: never started, and never will
}


def quoted(value: str) -> str:
    """`value` as a DOT string, shown literally: quotes and backslashes escaped, line breaks
    as DOT's own (the only escape it keeps)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def _wrapped(text: str) -> list[str]:
    lines = textwrap.wrap(" ".join(text.split()), LINE, break_on_hyphens=False) or [""]
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], lines[MAX_LINES - 1][: LINE - 1] + "…"]
    return lines


def label(step: GraphStep) -> str:
    """What a node says: its name (else its key), its key when it has a name, how it waits
    (`kind_line`), then `if …` for a condition and `for each in …` for a fan-out (the
    expression on its own lines when it is long)."""
    lines = _wrapped(step.name) if step.name else [step.key]
    if step.name:
        lines.append(f"[{step.key}]")
    if (kind := kind_line(step)) is not None:
        lines += _wrapped(kind)
    for word, expression in (("if", step.when), ("for each in", step.for_each)):
        if expression is None:
            continue
        said = _wrapped(f"{word} {expression}")
        lines += said if len(said) == 1 else [word, *_wrapped(expression)]
    return "\n".join(lines)


def kind_line(step: GraphStep) -> str | None:
    """How a step that waits waits ("async: answers later", "approval by an editor",
    "sleep 600 s", "sleep until …"); None for a call."""
    if step.kind is StepKind.ASYNC:
        return "async: answers later"
    if step.kind is StepKind.APPROVAL:
        return f"approval by {role_phrase(step.approvers or Role.EDITOR)}"
    if step.kind is StepKind.SLEEP:
        return (
            f"sleep {step.sleep_s} s"
            if step.sleep_s is not None
            else f"sleep until {step.sleep_until}"
        )
    return None


def dot(graph: Graph, states: Mapping[str, StepState] | None = None) -> str:
    """The DOT text of `graph`: a node per step (a condition's dashed and marked `if`, a
    fan-out's drawn as a stack and marked `for each`), an edge per need, dashed for an
    optional one; each node filled by its state in `states` when given."""
    out = [
        "digraph steps {",
        '  graph [rankdir=TB, nodesep=0.3, ranksep=0.4, bgcolor="transparent"];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f8f9fa", color="#495057",'
        ' fontname="sans-serif", fontsize=11, margin="0.15,0.06"];',
        '  edge [color="#495057", arrowsize=0.7];',
    ]
    for step in graph.steps:
        attributes = [f"label={quoted(label(step))}"]
        styles = ["rounded", "filled"]
        if step.when is not None:
            styles.append("dashed")
        if step.for_each is not None:
            attributes.append("peripheries=2")
        attributes.append(f'style="{",".join(styles)}"')
        if states is not None:
            state = states.get(step.key, StepState.PENDING)
            attributes.append(f'fillcolor="{_FILL[state]}"')
            attributes.append(f"tooltip={quoted(f'{step.key}: {state}')}")
        out.append(f"  {quoted(step.key)} [{', '.join(attributes)}];")
    for step in graph.steps:
        for need in step.needs:
            out.append(f"  {quoted(need)} -> {quoted(step.key)};")
        for need in step.optional_needs:
            out.append(
                f'  {quoted(need)} -> {quoted(step.key)} [style=dashed, tooltip="optional need"];'
            )
    out.append("}")
    return "\n".join(out)


def legend() -> str:
    """The DOT text of the key to `states`' colours: a box per state, in rows of LEGEND_ROW
    (narrow enough for a phone), filled as `dot` fills a step in that state."""
    out = [
        "digraph legend {",
        '  graph [rankdir=TB, nodesep=0.12, ranksep=0.1, bgcolor="transparent"];',
        '  node [shape=box, style="rounded,filled", color="#495057", fontname="sans-serif",'
        ' fontsize=10, width=0.8, height=0.25, margin="0.05,0.02"];',
    ]
    states = list(StepState)
    rows = [states[n : n + LEGEND_ROW] for n in range(0, len(states), LEGEND_ROW)]
    for row in rows:
        names = " ".join(quoted(state) for state in row)
        out.append(f"  {{rank=same; {names}}}")
        for state in row:
            out.append(f'  {quoted(state)} [fillcolor="{_FILL[state]}"];')
    # Invisible edges stack the rows in order, each box over the one below it.
    for upper, lower in itertools.pairwise(rows):
        for top, below in zip(upper, lower, strict=False):
            out.append(f"  {quoted(top)} -> {quoted(below)} [style=invis];")
    out.append("}")
    return "\n".join(out)


def show(graph: Graph, states: Mapping[str, StepState] | None = None) -> None:
    """The graph, as wide as it needs (never wider than the page), with a key to its marks
    (and, given `states`, to its colours)."""
    st.graphviz_chart(dot(graph, states), width="content")
    if states is not None:
        st.graphviz_chart(legend(), width="content")
    st.caption(
        "Arrows point from a step to the steps that need it; a dashed arrow is an optional "
        "need (its skip does not skip the step). A dashed box runs only `if` its condition "
        "holds; a doubled box calls the agent once per item (`for each`)."
    )
