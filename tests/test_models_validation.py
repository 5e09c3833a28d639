"""Model fields are validated with pydantic; a refused value is a clear error and writes nothing."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest
from model_fixtures import stored
from pydantic import Field, field_validator

from earnevents import BaseModel, EarnEventsError, ModelValidationError
from earnevents.events.decorators import before_create
from earnevents.models import MISSING

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = pytest.mark.mongo


class Member(BaseModel):
    name: str = Field(min_length=2)
    email: str
    age: int = 0
    tags: list[str] = []  # noqa: RUF012 - pydantic copies defaults for each instance

    @field_validator("email")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        return value.lower()


class Account(BaseModel):
    """The seed's pattern: a required field a before_create hook fills."""

    name: str
    created_at: dt.datetime

    @before_create
    def _stamp(self) -> None:
        self.created_at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class Note(BaseModel):
    text: str
    written_at: dt.datetime = Field(default_factory=lambda: dt.datetime(2026, 2, 2, tzinfo=dt.timezone.utc))


def test_a_bad_type_at_construction_names_the_model_and_field():
    with pytest.raises(ModelValidationError, match=r"Member\.age: Input should be a valid integer.*got str 'old'"):
        Member(name="ada", email="a@x", age="old")


def test_a_bad_type_on_assignment_is_refused_and_the_old_value_kept():
    member = Member(name="ada", email="a@x", age=3)
    with pytest.raises(ModelValidationError, match=r"Member\.age"):
        member.age = "old"
    assert member.age == 3


def test_every_refused_field_is_named():
    with pytest.raises(ModelValidationError) as caught:
        Member(name="a", email=5)
    assert "Member.name: String should have at least 2 characters" in str(caught.value)
    assert "Member.email: Input should be a valid string" in str(caught.value)


def test_the_error_is_an_earnevents_error_and_a_value_error_with_pydantics_details_attached():
    with pytest.raises(ModelValidationError) as caught:
        Member(name="ada", email="a@x", age="old")
    assert isinstance(caught.value, EarnEventsError) and isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)
    assert caught.value.__cause__.errors()[0]["loc"] == ("age",)


def test_an_unknown_field_at_construction_is_refused():
    with pytest.raises(ModelValidationError, match="Member has no field 'colour'"):
        Member(name="ada", email="a@x", colour="red")


def test_assigning_an_unknown_field_is_refused():
    member = Member(name="ada", email="a@x")
    with pytest.raises(ModelValidationError, match="Member has no field 'colour'"):
        member.colour = "red"


def test_pydantic_validators_and_constraints_apply():
    assert Member(name="ada", email="ADA@X").email == "ada@x"
    with pytest.raises(ModelValidationError, match="at least 2 characters"):
        Member(name="a", email="a@x")


def test_a_required_field_not_given_is_missing_until_set():
    member = Member(name="ada")
    assert member.email is MISSING
    assert member.missing_fields() == ["email"]
    member.email = "a@x"
    assert member.missing_fields() == []


def test_default_factories_run_per_instance():
    assert Note(text="hi").written_at == dt.datetime(2026, 2, 2, tzinfo=dt.timezone.utc)


async def test_creating_with_a_required_field_missing_is_refused_and_writes_nothing(models_env):
    with pytest.raises(ModelValidationError, match=r"Member: required field\(s\) \['email'\] not set"):
        await Member(name="ada").create()
    assert await Member.count() == 0


async def test_a_bad_value_put_in_place_is_caught_before_the_write(models_env):
    # Given a model whose list got a wrong-typed item in place (no assignment to validate)
    member = Member(name="ada", email="a@x")
    member.tags.append(5)  # type: ignore[arg-type]
    # When it is created
    with pytest.raises(ModelValidationError, match=r"Member\.tags\[0\]: Input should be a valid string"):
        await member.create()
    # Then nothing was written
    assert await Member.count() == 0


async def test_a_bad_value_put_in_place_is_caught_before_an_update(models_env):
    member = await Member(name="ada", email="a@x").create()
    member.tags.append(5)  # type: ignore[arg-type]
    with pytest.raises(ModelValidationError, match=r"Member\.tags\[0\]"):
        await member.save()
    assert (await stored(models_env, "members").find_one({"_id": member.id}))["tags"] == []


async def test_a_before_create_hook_may_fill_a_required_field(models_env):
    account = await Account(name="acme").create()
    loaded = await Account.get(account.id)
    assert loaded is not None and loaded.created_at == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


async def test_loading_a_document_with_a_bad_value_names_the_field(models_env):
    # Given a document another program stored with a wrong type
    member = await Member(name="ada", email="a@x").create()
    await stored(models_env, "members").update_one({"_id": member.id}, {"$set": {"age": "old"}})
    # When it is loaded, Then the error names the field
    with pytest.raises(ModelValidationError, match=r"Member\.age: Input should be a valid integer"):
        await Member.get(member.id)
