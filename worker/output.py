"""Checking a text answer against the JSON format the job asked for.

An answer that does not parse (or, with `json_schema`, does not validate) is `invalid_output`:
the call was made and is billed, and the attempt is retried like a transient failure. The
error message names where and which rule failed, never the answer's text.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from models.errors import RetryableProviderError
from models.pricing import Usage
from models.schemas import TextParams
from worker.providers.base import TextResult

INVALID_OUTPUT = "invalid_output"


class InvalidOutput(RetryableProviderError):
    """The model answered, but not in the asked format; carries the usage the call billed."""

    def __init__(self, detail: str, *, usage: Usage):
        super().__init__(detail, kind=INVALID_OUTPUT, usage=usage)


def _parse(result: TextResult) -> Any:
    try:
        return json.loads(result.text)
    except ValueError:
        cut = " (the answer was cut at max_tokens)" if result.finish_reason == "length" else ""
        raise InvalidOutput(f"the answer is not valid JSON{cut}", usage=result.usage) from None


def _schema_error(schema: dict[str, Any], value: Any) -> str | None:
    validator = validator_for(schema)(schema, format_checker=FormatChecker())
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    return f"the answer does not match the schema at {where}: fails {error.validator!r}"


def checked(result: TextResult, params: TextParams) -> TextResult:
    """The result with its parsed `json`, or InvalidOutput; answers with tool calls and plain
    text formats pass through unchanged."""
    fmt = params.response_format
    if fmt is None or fmt.type == "text" or result.tool_calls:
        return result
    value = _parse(result)
    if fmt.type == "json_object" and not isinstance(value, dict):
        raise InvalidOutput("the answer is JSON but not an object", usage=result.usage)
    if fmt.type == "json_schema":
        problem = _schema_error(fmt.json_schema.schema_, value)
        if problem:
            raise InvalidOutput(problem, usage=result.usage)
    return dataclasses.replace(result, json=value)
