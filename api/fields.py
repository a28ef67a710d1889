"""API models that take their fields from a dataclass of the core or the db, not a copy.

`fields_from(ScheduleRow)` on a model gives it every field of `ScheduleRow` with its
type and default, in the row's order; the model itself declares only what the API
adds (its own fields after the row's, or a field of the row under another type) and
`more` says more about a field it takes as it is (a description, the words of an
enum). A field added to the dataclass reaches the API with nothing else to edit.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from typing import Annotated, Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


def fields_from(
    *sources: type,
    omit: Collection[str] = (),
    more: Mapping[str, FieldInfo] | None = None,
    ints: Any = int,
) -> Callable[[type[M]], type[M]]:
    """A class decorator: the model as written, with the fields of the dataclasses `sources`.

    Fields named in `omit` are left out; `more[name]` (a `Field(...)`) is merged into the
    field `name`; `ints` stands for `int` in every field's type (bounds the database
    needs on input). The model keeps its config, validators, methods and docstring.
    """

    def build(model: type[M]) -> type[M]:
        said = more or {}
        taken: dict[str, Any] = {}
        for source in sources:
            taken |= _fields(source, said, ints)
        unknown = (set(omit) | set(said)) - set(taken)
        twice = set(said) & set(model.model_fields)
        if unknown or twice:
            raise TypeError(f"{model.__name__}: no such field {unknown} / declared twice {twice}")
        # The model comes first among the bases, so its declarations win; the sources'
        # fields come first in the order (pydantic orders fields by the bases reversed).
        sourced = create_model(
            f"{model.__name__}Fields", **{k: v for k, v in taken.items() if k not in omit}
        )
        built = create_model(
            model.__name__,
            __base__=(model, sourced),
            __module__=model.__module__,
            __doc__=model.__doc__,
        )
        return cast(type[M], built)

    return build


def enum_words(enum: type[StrEnum]) -> dict[str, Any]:
    """A text field's words, for its JSON schema (`Field(json_schema_extra=...)`): the core
    checks the value itself, so that a wrong word gets the message every entry point gives."""
    return {"enum": [str(member) for member in enum]}


def _fields(source: type, more: Mapping[str, FieldInfo], ints: Any) -> dict[str, Any]:
    """Every field of the dataclass `source` as `create_model` takes it: (type, default)."""
    hints = get_type_hints(source)
    taken: dict[str, Any] = {}
    for field in dataclasses.fields(source):
        hint = _with_ints(hints[field.name], ints)
        if field.name in more:
            hint = Annotated[hint, more[field.name]]
        taken[field.name] = (hint, _default(field))
    return taken


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return Field(default_factory=field.default_factory)
    return ...


def _with_ints(hint: Any, ints: Any) -> Any:
    """`hint` with `ints` for `int`, alone or in a union (`int | None`)."""
    if hint is int:
        return ints
    if get_origin(hint) in (Union, types.UnionType):
        return Union[tuple(_with_ints(arg, ints) for arg in get_args(hint))]  # noqa: UP007
    return hint
