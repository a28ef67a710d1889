"""API models that take their fields from the core's and the db's dataclasses (`api.fields`):
a field declared once reaches the model, in the dataclass's order, with what the API adds."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.fields import fields_from
from api.responses import ExecutionOut, ScheduleOut, StepRunOut
from api.schemas import AutomationIn, Int32, TimingIn
from core.automation import AutomationInput
from core.schedule import POLICY_FIELDS
from core.timing import TIMING_FIELDS
from db.queries import ExecutionRow, ScheduleRow, StepRunRow


@dataclass(frozen=True)
class Row:
    id: int
    name: str
    note: str | None = None

    @property
    def shout(self) -> str:
        return self.name.upper()


def test_a_model_takes_every_field_of_its_dataclass_in_order_with_its_default() -> None:
    # given a model that declares only what it adds to a dataclass
    @fields_from(Row, more={"note": Field(description="why")})
    class RowOut(BaseModel):
        model_config = ConfigDict(from_attributes=True)
        shout: str

    # when it reads a row
    out = RowOut.model_validate(Row(id=1, name="a"))
    # then it has the row's fields first, then its own (a property of the row)
    assert list(RowOut.model_fields) == ["id", "name", "note", "shout"]
    assert out.model_dump() == {"id": 1, "name": "a", "note": None, "shout": "A"}
    # and the field it says more about keeps its default, with the description
    assert RowOut.model_fields["note"].description == "why"
    assert not RowOut.model_fields["note"].is_required()


def test_ints_take_the_input_bound_and_a_redeclared_field_keeps_its_place() -> None:
    @fields_from(Row, ints=Int32)
    class RowIn(BaseModel):
        name: int  # a field of the row under another type

    assert list(RowIn.model_fields) == ["id", "name", "note"]
    assert RowIn(id=1, name=2).name == 2
    with pytest.raises(ValidationError):
        RowIn(id=2**31, name=1)


def test_a_field_named_but_not_there_or_said_twice_is_refused() -> None:
    with pytest.raises(TypeError):

        @fields_from(Row, omit={"nothing"})
        class Missing(BaseModel):
            pass

    with pytest.raises(TypeError):

        @fields_from(Row, more={"name": Field(description="x")})
        class Twice(BaseModel):
            name: str


def test_the_api_models_hold_every_field_of_the_types_they_show() -> None:
    # a schedule field added to the core reaches the API's input, in the core's order
    assert list(TimingIn.model_fields) == [*TIMING_FIELDS, *POLICY_FIELDS]
    assert set(AutomationIn.model_fields) == {f.name for f in fields(AutomationInput)} - {
        "owner_id"
    }
    # and a field added to a db row reaches the API's answer
    for model, row in ((ScheduleOut, ScheduleRow), (ExecutionOut, ExecutionRow)):
        assert {f.name for f in fields(row)} <= set(model.model_fields)
    assert list(StepRunOut.model_fields) == [f.name for f in fields(StepRunRow)]
