"""Step templates and conditions: Jinja2 in a sandbox, strict about names, bounded in size and work.

A step's message is a text template and its input a JSON value whose strings are
templates; `when` and `for_each` are expressions. All four use one syntax, Jinja2's
(the `{{ }}` people already write for secret references), through one
`SandboxedEnvironment`: conditions through `compile_expression`, so a condition is
written as it would be inside `{{ }}`. No second expression language (JMESPath and the
like) and no new dependency.

What a template may read is given by the caller (`core.graph`): `input`, `steps.<key>.output`
of the step's needs, and `item` and `index` in a step that fans out. `template_problems`
refuses at save anything else it names, and `{{ secret.NAME }}` in particular: a rendered
message or input is stored with its step run, and a secret's value must never land there.

Bounds, so a template cannot exhaust a worker:
- source length: MAX_MESSAGE for a message, MAX_INPUT_BYTES for an input (as a run's input),
  MAX_EXPRESSION for a condition or a `for_each`;
- a smaller language: no macros, call blocks, recursive loops, imports or includes (nothing
  can recurse), a `range` of at most MAX_RANGE numbers, only the filters of `_FILTERS`,
  and of the methods of text, lists and objects only those that cannot grow a value;
- size: every value built (an operator's, a call's or a filter's result, a list or an
  object written out, a `~` concatenation) and the rendered text are at most MAX_RENDERED
  characters; `*`, `**`, `%` formatting, `replace`, `join` and `indent` are checked before
  they run, so no single operation allocates far past that;
- work: every loop iteration, call, filter and operator spends one of MAX_TEMPLATE_OPS and
  checks a deadline of MAX_RENDER_S. Between two checks run only the few operations written
  between them (comparisons, tests, attribute reads: no loop, no recursion), each on values
  of bounded size, so a render ends, done or refused, within about MAX_RENDER_S. A render
  holds its thread that long at most: the engine renders off its event loop.
A template that breaks a bound, reads an undefined name or fails otherwise raises
TemplateError, whose message names the cause; the engine fails the step with it.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.meta import find_undeclared_variables
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from core.errors import StepwiseError
from core.limits import MAX_RANGE, MAX_RENDER_S, MAX_RENDERED, MAX_TEMPLATE_OPS


class TemplateError(StepwiseError):
    """A template or condition could not be compiled or rendered; the message says why."""


# Names a template may read beyond those its step is given: two helpers of Jinja's own.
HELPERS = frozenset({"range", "dict"})
# The methods a template may call, by the type of value they belong to: none makes a value
# much bigger than itself (no `center`, `ljust`, `zfill`, `expandtabs`; `replace` and `join`
# are the checked filters; `format` is the checked `|format`).
# fmt: off
_TEXT_METHODS = frozenset({
    "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
    "startswith", "endswith", "title", "capitalize", "casefold", "count", "find", "rfind",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric",
    "isdecimal", "removeprefix", "removesuffix", "partition", "rpartition",
})
# fmt: on
_METHODS: tuple[tuple[Any, frozenset[str]], ...] = (
    (str, _TEXT_METHODS),
    (dict, frozenset({"keys", "values", "items", "get"})),
    (list | tuple, frozenset({"count", "index"})),
    (int | float, frozenset()),
)
MAX_FORMAT_WIDTH = 100  # a width or precision in `%` formatting, and `indent`'s width
# Python prints integers of at most 4,300 digits (sys.get_int_max_str_digits): about as many bits.
MAX_INT_BITS = 14_000
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d*))?")
# One `{{ expression }}` and nothing else (Jinja's whitespace marks "-" and "+" aside).
_SINGLE_EXPRESSION = re.compile(r"\s*\{\{[-+]?(?P<expression>.*?)[-+]?\}\}\s*", re.DOTALL)
_REFUSED_NODES: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Macro, "macros"),
    (nodes.CallBlock, "call blocks"),
    (nodes.Import, "imports"),
    (nodes.FromImport, "imports"),
    (nodes.Include, "includes"),
    (nodes.Extends, "extends"),
    (nodes.Block, "blocks"),
    # Both render their whole body to one text before anything can measure it.
    (nodes.AssignBlock, "block assignments ({% set x %}...{% endset %})"),
    (nodes.FilterBlock, "filter blocks"),
)


# --- work and size ---------------------------------------------------------------------------


@dataclass
class _Budget:
    ops: int
    deadline: float


# The budget of the render under way in this thread or task; None outside a render (then only
# the size checks apply).
_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _spend() -> None:
    budget = _budget.get()
    if budget is None:
        return
    budget.ops -= 1
    if budget.ops < 0:
        raise TemplateError(f"does too much work (over {MAX_TEMPLATE_OPS:,} steps of work)")
    if time.monotonic() > budget.deadline:
        raise TemplateError(f"takes too long (over {MAX_RENDER_S:g} s)")


def _measure(value: Any, limit: int = MAX_RENDERED) -> int:
    """About how many characters `value` takes as text; counting stops just past `limit`, so
    a value that repeats one list many times over is measured in bounded time."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, dict | list | tuple):
            total += 2 + len(item)
            if total <= limit:
                pending.extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 8
    return total


def _too_big(size: int) -> TemplateError:
    return TemplateError(f"builds a value over {MAX_RENDERED:,} characters (about {size:,})")


def _check_size(size: int) -> None:
    if size > MAX_RENDERED:
        raise _too_big(size)


def _fits(value: Any) -> Any:
    """`value`, once known to be at most MAX_RENDERED characters."""
    _check_size(_measure(value))
    return value


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateError(f"asks for a range of {len(numbers):,} numbers (at most {MAX_RANGE:,})")
    return numbers


def _check_format(spec: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(spec):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_FORMAT_WIDTH):
                raise TemplateError(
                    f"formats with a width or precision over {MAX_FORMAT_WIDTH} ({spec[:40]!r})"
                )


def _before_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too big, before it runs."""
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                _check_size(_measure(sequence) * max(times, 0))
        both_ints = isinstance(left, int) and isinstance(right, int)
        if both_ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"multiplies to a number over {MAX_INT_BITS:,} bits")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"raises to a number over {MAX_INT_BITS:,} bits")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


# --- the filters -----------------------------------------------------------------------------


def _replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = str(value), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    _check_size(len(text) + found * (len(new) - len(old)))
    return text.replace(old, new, -1 if count is None else count)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    items = list(value)
    _check_size(_measure(items) + len(str(d)) * len(items))
    result: str = FILTERS["join"](eval_ctx, items, d, attribute)
    return result


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(value)
    size = width if isinstance(width, int) else len(width)
    if size > MAX_FORMAT_WIDTH:
        raise TemplateError(f"indents by over {MAX_FORMAT_WIDTH} characters")
    _check_size(len(text) + (text.count("\n") + 1) * max(size, 0))
    result: str = FILTERS["indent"](text, width, first, blank)
    return result


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format(str(value))
    result: str = FILTERS["format"](value, *args, **kwargs)
    return result


@jinja2.pass_eval_context
def _tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
    if indent is not None and not 0 <= indent <= 8:
        raise TemplateError("indents JSON by more than 8 spaces")
    return FILTERS["tojson"](eval_ctx, value, indent)


_CHECKED_FILTERS: dict[str, Callable[..., Any]] = {
    "replace": _replace,
    "join": _join,
    "indent": _indent,
    "format": _format,
    "tojson": _tojson,
}
# Jinja's own filters whose result is at most about as big as what they are given.
# fmt: off
_LINEAR_FILTERS = (
    "abs", "capitalize", "count", "d", "default", "dictsort", "filesizeformat", "first",
    "float", "groupby", "int", "items", "last", "length", "list", "lower", "map", "max",
    "min", "reject", "rejectattr", "reverse", "round", "select", "selectattr", "sort",
    "string", "striptags", "sum", "title", "trim", "truncate", "unique", "upper",
    "urlencode", "wordcount",
)
# fmt: on


def _spending(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` spending one unit of work per call and refusing a result too big. Jinja's
    marks (`pass_context` and the like) are copied with the rest of its attributes."""

    @functools.wraps(function)
    def spend(*args: Any, **kwargs: Any) -> Any:
        _spend()
        return _fits(function(*args, **kwargs))

    return spend


_FILTERS = {
    name: _spending(function)
    for name, function in {
        **{name: FILTERS[name] for name in _LINEAR_FILTERS},
        **_CHECKED_FILTERS,
    }.items()
}


def _each(iterable: Iterable[Any]) -> Iterator[Any]:
    """A loop's items, each spending one unit of work."""
    for item in iterable:
        _spend()
        yield item


def _concat(parts: list[Any]) -> str:
    """`a ~ b ~ c`, its size checked before the text is built."""
    _check_size(sum(_measure(part) for part in parts))
    return "".join(str(part) for part in parts)


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so that every loop spends work and every value built from
    parts is checked for size: what the sandbox's hooks (calls, operators) do not see."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        loop = cast(nodes.For, self.generic_visit(node))
        loop.iter = self._filter(loop.iter, "_each")
        return loop

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        concat = cast(nodes.Concat, self.generic_visit(node))
        parts = nodes.List(concat.nodes, lineno=concat.lineno)
        return self._filter(parts, "_concat")

    def _sized(self, node: nodes.Expr) -> nodes.Node:
        built = cast(nodes.Expr, self.generic_visit(node))
        if isinstance(built, nodes.Tuple) and built.ctx != "load":
            return built  # the targets of a loop or an assignment
        return self._filter(built, "_fits")

    visit_List = visit_Dict = visit_Tuple = _sized

    @staticmethod
    def _filter(node: nodes.Node, name: str) -> nodes.Filter:
        return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


# --- the environment -------------------------------------------------------------------------


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with the bounds of this module's docstring."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        # Not optimised: the optimiser would run parts of a template while compiling it,
        # outside any budget.
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            optimized=False,
            keep_trailing_newline=True,  # a message's text is sent as written
        )
        self.globals = {"range": _range, "dict": dict}
        self.filters = {**_FILTERS, "_each": _each, "_concat": _concat, "_fits": _fits}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        for kind, allowed in _METHODS:
            if isinstance(obj, kind):
                return attr in allowed
        return True

    def wrap_str_format(self, value: Any) -> None:
        return None  # `format` on text is refused by is_safe_attribute; `|format` is checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        # JSON first: `output.items` is the answer's "items", not the dict method.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        return self.undefined(
            f"{attribute!r} is not available in templates (on {type(obj).__name__} values)",
            name=attribute,
            obj=obj,
            exc=SecurityError,
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        _before_binop(operator, left, right)
        return _fits(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        return _fits(super().call(__context, __obj, *args, **kwargs))

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        # Jinja's documented hook between a parsed tree and its code: every template and
        # expression (compile_expression included) passes here once.
        return super()._generate(_Bounded().visit(source), name, filename, defer_init)


_env = _Sandbox()


# --- checks at save --------------------------------------------------------------------------


def template_problems(
    source: str, *, expression: bool, steps: Collection[str], names: Collection[str]
) -> list[str]:
    """What is wrong with a template (or, `expression`, a condition), as phrases that follow
    its field's name: it does not compile, uses a construct or a filter refused here, reads a
    secret, a name other than `names` and HELPERS, or `steps` otherwise than as
    `steps.<key>.output` for a key in `steps`. Empty when it may be saved."""
    try:
        tree = _parse(source, expression=expression)
        problems = _refused_constructs(tree) + _reading_problems(tree, steps, names)
        _env.compile(tree)  # finds unknown filters and tests (and rewrites the tree: last)
    except jinja2.TemplateSyntaxError as exc:
        return [f"does not compile: {str(exc.message).rstrip('.')} (line {exc.lineno})"]
    except jinja2.TemplateError as exc:
        return [f"does not compile: {str(exc.message).rstrip('.')}"]
    except RecursionError:  # Jinja's parser and compiler recurse into nested expressions
        return ["nests too deeply: split it into simpler parts"]
    return problems


def _reading_problems(
    tree: nodes.Template, steps: Collection[str], names: Collection[str]
) -> list[str]:
    """What of what `tree` reads it may not read."""
    problems = []
    # Jinja gives every template `self` (its blocks), without counting it as read.
    read = find_undeclared_variables(tree) | {
        n.name for n in tree.find_all(nodes.Name) if n.name == "self" and n.ctx == "load"
    }
    if "secret" in read:
        problems.append(
            "reads a secret: a secret's value must never be stored with a run, and a rendered "
            "message or input is; send it in a request header instead"
        )
    unknown = sorted(read - {"secret", "steps", *names, *HELPERS})
    if unknown:
        problems.append(
            f"reads {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"defined here (it may read {', '.join(sorted({'steps', *names}))})"
        )
    return problems + _steps_problems(tree, steps)


def input_problems(template: Any, *, steps: Collection[str], names: Collection[str]) -> list[str]:
    """`template_problems` of every text of an input template, each checked as
    `render_value` reads it (one expression, or a template)."""
    problems: list[str] = []
    for text in _texts(template):
        expression = _single_expression(text)
        problems += template_problems(
            text if expression is None else expression,
            expression=expression is not None,
            steps=steps,
            names=names,
        )
    return sorted(set(problems), key=problems.index)


def _texts(value: Any) -> list[str]:
    """Every text of a JSON value but its keys."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [text for item in value for text in _texts(item)] if isinstance(value, list) else []


def _single_expression(text: str) -> str | None:
    """The expression of a text that is one `{{ expression }}` and nothing else, or None."""
    found = _SINGLE_EXPRESSION.fullmatch(text)
    if found is None or any(mark in found["expression"] for mark in ("{{", "}}", "{%", "{#")):
        return None
    return found["expression"]


def _parse(source: str, *, expression: bool) -> nodes.Template:
    if not expression:
        return _env.parse(source)
    parser = Parser(_env, source, state="variable")
    found = parser.parse_expression()
    if not parser.stream.eos:
        raise jinja2.TemplateSyntaxError(
            "text after the expression", parser.stream.current.lineno, None, None
        )
    tree = nodes.Template([nodes.Output([found])])
    tree.set_environment(_env)
    return tree


def _refused_constructs(tree: nodes.Template) -> list[str]:
    problems = [
        f"uses {what}, which templates here do not allow"
        for kind, what in _REFUSED_NODES
        if next(tree.find_all(kind), None) is not None
    ]
    if any(loop.recursive for loop in tree.find_all(nodes.For)):
        problems.append("uses a recursive loop, which templates here do not allow")
    if any(f.name.startswith("_") for f in tree.find_all(nodes.Filter)):
        problems.append("uses a filter that is not available")
    # The way out of a sandbox, refused at save already when written plainly: Python's own
    # names, `__x__` (`''.__class__`, `input['__class__']`); the sandbox refuses them at
    # render too (`is_safe_attribute`). A key of the data such as `_id` or `__typename`
    # is no such name, and reads as the key it is.
    read = [str(node.attr) for node in tree.find_all(nodes.Getattr)] + [
        str(node.arg.value)
        for node in tree.find_all(nodes.Getitem)
        if isinstance(node.arg, nodes.Const)
    ]
    internal = sorted({name for name in read if re.fullmatch(r"__\w+__", name)})
    if internal:
        problems.append(
            f"reads {', '.join(internal)}: Python's internal names (__x__) are not available "
            "in templates"
        )
    return problems


def _key_of(node: nodes.Node, inner: nodes.Node) -> str | None:
    """The constant name `node` reads of `inner` (`inner.x` or `inner["x"]`), or None."""
    if isinstance(node, nodes.Getattr) and node.node is inner:
        return str(node.attr)
    if isinstance(node, nodes.Getitem) and node.node is inner and isinstance(node.arg, nodes.Const):
        return str(node.arg.value)
    return None


def _steps_problems(tree: nodes.Template, steps: Collection[str]) -> list[str]:
    parents: dict[int, nodes.Node] = {}
    for parent in [tree, *tree.find_all(nodes.Node)]:
        for child in parent.iter_child_nodes():
            parents[id(child)] = parent
    problems: list[str] = []
    for name in tree.find_all(nodes.Name):
        if name.name != "steps" or name.ctx != "load":
            continue
        step = parents[id(name)]
        key = _key_of(step, name)
        output = parents.get(id(step))
        if key is None or output is None or _key_of(output, step) != "output":
            problems.append("reads steps otherwise than as steps.<key>.output")
        elif key not in steps:
            problems.append(f"reads steps.{key}.output, but {key} is not one of its needs")
    return sorted(set(problems))


# --- rendering -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _template(source: str) -> jinja2.Template:
    return _env.from_string(source)


@functools.lru_cache(maxsize=1024)
def _expression(source: str) -> TemplateExpression:
    return _env.compile_expression(source, undefined_to_none=False)


def _run(what: str, work: Callable[[], Any]) -> Any:
    """`work()` within a fresh budget; any failure of the user's template as TemplateError."""
    token = _budget.set(_Budget(MAX_TEMPLATE_OPS, time.monotonic() + MAX_RENDER_S))
    try:
        return work()
    except TemplateError as exc:
        raise TemplateError(f"{what} {exc}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{what} reads something undefined: {exc.message}") from None
    except Exception as exc:  # a template is code its author wrote: any failure is theirs
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise TemplateError(f"{what} failed: {reason}") from None
    finally:
        _budget.reset(token)


def render_text(source: str, variables: Mapping[str, Any], *, what: str = "The message") -> str:
    """`source` rendered with `variables`; TemplateError (its message starting with `what`) on
    an undefined name, a refused operation or a bound broken."""

    def render() -> str:
        size = 0
        parts = []
        for part in _template(source).generate(variables):
            size += len(part)
            _check_size(size)
            parts.append(part)
        return "".join(parts)

    result: str = _run(what, render)
    return result


def evaluate(source: str, variables: Mapping[str, Any], *, what: str = "The expression") -> Any:
    """The value of the expression `source` (a `for_each`) with `variables`, as JSON (a
    sequence as a list); TemplateError as `render_text`, when it is undefined and when JSON
    cannot hold it. A value read whole (a need's output) may be bigger than MAX_RENDERED."""

    def value() -> Any:
        found = _expression(source)(variables)
        if isinstance(found, jinja2.Undefined):
            str(found)  # StrictUndefined raises, naming what is undefined
        return _as_json(found)  # read as it is: what it built was checked as it was built

    return _run(what, value)


def condition(source: str, variables: Mapping[str, Any], *, what: str = "The condition") -> bool:
    """Whether the expression `source` (a `when`) is true with `variables` (Jinja's truth:
    empty text, lists and objects, 0 and none are false); TemplateError as `evaluate`."""
    result: bool = _run(what, lambda: bool(_expression(source)(variables)))
    return result


def render_value(template: Any, variables: Mapping[str, Any], *, what: str = "The input") -> Any:
    """A JSON value rendered: each text in it (not the keys) is a template. A text that is one
    `{{ expression }}` and nothing else keeps the expression's type (`"{{ input.ids }}"` is
    the list itself); other texts render to text. The whole is at most MAX_RENDERED
    characters. TemplateError as `render_text`."""
    rendered = _render_value(template, variables, what)
    if (size := _measure(rendered)) > MAX_RENDERED:
        raise TemplateError(f"{what} {_too_big(size)}")
    return rendered


def _render_value(template: Any, variables: Mapping[str, Any], what: str) -> Any:
    if isinstance(template, dict):
        return {key: _render_value(value, variables, what) for key, value in template.items()}
    if isinstance(template, list):
        return [_render_value(value, variables, what) for value in template]
    if not isinstance(template, str):
        return template
    expression = _single_expression(template)
    if expression is None:
        return render_text(template, variables, what=what)
    return evaluate(expression, variables, what=what)


def _as_json(value: Any) -> Any:
    """`value` as JSON (tuples and other sequences as lists); TemplateError naming the first
    part that JSON cannot hold."""
    if isinstance(value, str | bool | int) or value is None:
        return str(value) if isinstance(value, str) else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateError(f"is {value}, which JSON cannot hold")
        return value
    if isinstance(value, dict):
        return {str(key): _as_json(item) for key, item in value.items()}
    if isinstance(value, Iterable):  # a list, a tuple, a filter's generator, a range
        return [_as_json(item) for item in value]
    raise TemplateError(f"is a {type(value).__name__}, which JSON cannot hold")


# What Jinja would read as markup or rewrite in plain text: its openers, and the carriage
# return of a Windows line end (Jinja's lexer turns line ends into "\n"), with a "{" before
# it (left alone, it would open the "{{" put in the carriage return's place).
_NOT_LITERAL = re.compile(r"\{[{%#\r]|\r")


def literal(text: str) -> str:
    """A template that renders to `text` exactly: how a message written before templates
    (a chain's) keeps being sent as written."""
    return _NOT_LITERAL.sub(lambda found: f"{{{{ {found.group()!r} }}}}", text)
