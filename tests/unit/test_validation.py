"""act.validation: the one-line message every entry point gives for bad input."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from act.validation import validation_problems


class Inner(BaseModel):
    port: int = Field(ge=1)


class Settings(BaseModel):
    name: str
    inner: Inner
    mode: str = "a"

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("a", "b"):
            raise ValueError(f"mode must be a or b, got {value!r}")
        return value

    @model_validator(mode="after")
    def _whole(self) -> Settings:
        if self.name == "bad":
            raise ValueError("this name cannot be used")
        return self


def _error(**fields: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(fields)
    return info.value


def test_each_problem_is_named_by_its_dotted_location() -> None:
    message = validation_problems(_error(name="x", inner={"port": 0}, mode="c"))
    assert message == (
        "inner.port: Input should be greater than or equal to 1; "
        "mode: mode must be a or b, got 'c'"  # the validator's words, not "Value error, ..."
    )


def test_a_problem_of_the_whole_object_is_named_whole_or_shown_alone() -> None:
    error = _error(name="bad", inner={"port": 1})
    assert validation_problems(error) == "this name cannot be used"
    assert validation_problems(error, whole="settings") == "settings: this name cannot be used"


def test_locations_can_be_named_by_the_caller() -> None:
    message = validation_problems(
        _error(inner={"port": 1}), name=lambda loc: "--" + str(loc[-1]).replace("_", "-")
    )
    assert message == "--name: Field required"
