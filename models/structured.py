"""Structured output and function calling: the shapes of `response_format`, `tools`,
`tool_choice` and assistant `tool_calls`, checked at submit so a bad one is a 422, not a
billed provider error.

JSON Schemas are checked with `jsonschema` against the dialect they declare (`$schema`), else
draft 2020-12, as OpenAI reads them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: OpenAI's rule for function and schema names
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema itself, or ValueError naming why it is not valid JSON Schema."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    return schema


class JsonSchemaSpec(BaseModel):
    """`response_format.json_schema`: the schema the answer must be an instance of."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    #: `schema` shadows a BaseModel attribute, hence the alias
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_schema(value)


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class FunctionDef(BaseModel):
    """A function the model may call; `parameters` is the JSON Schema of its arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else check_schema(value)


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": …}}`: call exactly this tool."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    #: the arguments as the model wrote them: a JSON string
    arguments: str


class ToolCall(BaseModel):
    """One call an assistant message made, as the model returned it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


def tool_choice_problem(tools: list[Tool] | None, choice: ToolChoice | None) -> str | None:
    """Why `tool_choice` cannot be honoured with these `tools`, or None."""
    if choice is None:
        return None
    if not tools:
        return "tool_choice needs tools"  # OpenAI refuses it as well
    if isinstance(choice, NamedToolChoice):
        names = [t.function.name for t in tools]
        if choice.function.name not in names:
            return f"tool_choice names {choice.function.name!r}, which is not among tools {names}"
    return None
