"""One line of an OpenAI batch input file → a genq job request, or the reason it is refused.

A line is `{"custom_id", "method": "POST", "url", "body"}`; its body is what the endpoint
(`/v1/chat/completions`, `/v1/images/generations`) takes, translated to a `JobCreate` that genq's
own job rules then check (validation here, the cost policy in models/planning.py). Refusals
carry OpenAI's error codes where OpenAI has one (`invalid_json_line`,
`missing_required_parameter`, `duplicate_custom_id`, `invalid_url`, `unknown_parameter`,
`string_above_max_length`, `invalid_type`) and genq's otherwise, each with the `param` at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from models.errors import InvalidRequest
from models.schemas import JobCreate
from models.text_rules import NUL

#: a custom_id is at most this long (genq's column; OpenAI documents no limit)
MAX_CUSTOM_ID = 512
TIERS = ("economy", "balanced", "premium")
LINE_FIELDS = ("custom_id", "method", "url", "body")
#: OpenAI chat parameters that change nothing genq does, dropped (`n` and `stream` only as 1/false)
IGNORED_CHAT = ("user", "store", "service_tier")
#: an image job's `response_format` is kept here in the job's metadata, for the output file
IMAGE_FORMAT_KEY = "openai_response_format"


@dataclass(frozen=True)
class LineError(Exception):
    """Why a line cannot become a job, in OpenAI's terms."""

    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True, kw_only=True)
class BatchRequest:
    """A line that parsed: its custom_id, and the job it asks for (not yet planned)."""

    custom_id: str
    job: JobCreate


def parse_line(raw: bytes, *, endpoint: str) -> BatchRequest:
    """Check the line's envelope and translate its body; raises LineError."""
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LineError("invalid_json_line", "This line is not parseable as valid JSON.") from None
    except RecursionError:  # `[[[[…` nested deeper than the parser's stack, under the size limit
        raise LineError("invalid_json_line", "This line's JSON is nested too deeply.") from None
    if not isinstance(line, dict):
        raise LineError("invalid_json_line", "This line is not a JSON object.")
    for name in LINE_FIELDS:
        if name not in line:
            raise LineError(
                "missing_required_parameter", f"Missing required parameter: '{name}'.", name
            )
    for name in line:
        if name not in LINE_FIELDS:
            raise LineError(
                "unknown_parameter", f"Unrecognized request argument supplied: {name}", name
            )
    custom_id, method, url, body = (line[name] for name in LINE_FIELDS)
    _check_envelope(custom_id, method, url, body, endpoint=endpoint)
    translate = chat_job if endpoint == "/v1/chat/completions" else image_job
    return BatchRequest(custom_id=custom_id, job=translate(dict(body)))


def _check_envelope(custom_id: Any, method: Any, url: Any, body: Any, *, endpoint: str) -> None:
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("invalid_type", "custom_id must be a non-empty string.", "custom_id")
    if NUL in custom_id:  # a text column: PostgreSQL cannot store it
        message = "custom_id must not contain a NUL character (\\u0000)."
        raise LineError("invalid_value", message, "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise LineError(
            "string_above_max_length",
            f"custom_id is {len(custom_id)} characters; at most {MAX_CUSTOM_ID} are allowed.",
            "custom_id",
        )
    if method != "POST":
        raise LineError("invalid_method", f"method must be POST, not {method!r}.", "method")
    if url != endpoint:
        raise LineError(
            "invalid_url",
            f"The URL provided for this request does not match the batch endpoint {endpoint}.",
            "url",
        )
    if not isinstance(body, dict):
        raise LineError("invalid_type", "body must be a JSON object.", "body")


def _model_and_policy(body: dict[str, Any]) -> dict[str, Any]:
    """`body.model` names a model, or a tier (`economy`, `balanced`, `premium`) the cost
    policy chooses in; absent, the default tier."""
    model = body.pop("model", None)
    if model is None:
        return {}
    if not isinstance(model, str):
        raise LineError("invalid_type", "body.model must be a string.", "body.model")
    return {"policy": {"tier": model}} if model in TIERS else {"model": model}


def _required(body: dict[str, Any], name: str) -> Any:
    """Take the body's `name` out of it; missing, the line is OpenAI's missing parameter."""
    if name not in body:
        message = f"Missing required parameter: '{name}'."
        raise LineError("missing_required_parameter", message, f"body.{name}")
    return body.pop(name)


def _text_content(content: Any, index: int) -> Any:
    """OpenAI's content parts, when all are text, as the one string genq takes."""
    if not isinstance(content, list):
        return content
    if all(isinstance(p, dict) and p.get("type") == "text" for p in content) and content:
        return "".join(str(p.get("text", "")) for p in content)
    param = f"body.messages.{index}.content"
    raise LineError("invalid_value", "only text content parts are supported", param)


def _drop_defaults(body: dict[str, Any]) -> None:
    for name in IGNORED_CHAT:
        body.pop(name, None)
    if body.get("n", 1) != 1:
        raise LineError("invalid_value", "n must be 1 (one answer per request)", "body.n")
    if body.get("stream", False) is not False:
        raise LineError("invalid_value", "batch requests cannot stream", "body.stream")
    body.pop("n", None)
    body.pop("stream", None)


def chat_job(body: dict[str, Any]) -> JobCreate:
    """A `/v1/chat/completions` body as a genq text job."""
    head = _model_and_policy(body)
    messages = _required(body, "messages")
    if isinstance(messages, list):
        messages = [
            {**m, "content": _text_content(m.get("content"), i)} if isinstance(m, dict) else m
            for i, m in enumerate(messages)
        ]
    _drop_defaults(body)
    if "max_completion_tokens" in body:
        if "max_tokens" in body:
            raise LineError(
                "invalid_value",
                "give max_tokens or max_completion_tokens, not both",
                "body.max_completion_tokens",
            )
        body["max_tokens"] = body.pop("max_completion_tokens")
    return _validated({"kind": "text", "messages": messages, "params": body, **head})


def image_job(body: dict[str, Any]) -> JobCreate:
    """A `/v1/images/generations` body as a genq image job."""
    head = _model_and_policy(body)
    prompt = _required(body, "prompt")
    body.pop("user", None)
    metadata = {}
    if "response_format" in body:
        response_format = body.pop("response_format")
        if response_format not in ("url", "b64_json"):
            param = "body.response_format"
            raise LineError("invalid_value", "response_format is url or b64_json", param)
        metadata[IMAGE_FORMAT_KEY] = response_format
    job = {"kind": "image", "prompt": prompt, "params": body, "metadata": metadata, **head}
    return _validated(job)


def _validated(job: dict[str, Any]) -> JobCreate:
    try:
        return JobCreate.model_validate(job)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal"))]
        if where[:1] in (["params"], ["policy"]):
            where = where[1:]
        param = ".".join(["body", *where]) if where else "body"
        raise LineError("invalid_request", f"{param}: {_plain(err['msg'])}", param) from None


def _plain(message: str) -> str:
    return message.removeprefix("Value error, ")


def planning_error(exc: InvalidRequest) -> LineError:
    """genq's cost policy refused the request (unknown model, a limit, a ceiling)."""
    loc = (exc.errors or [{}])[0].get("loc", ["body"])
    where = [str(p) for p in loc[1:]]
    if where[:1] in (["params"], ["policy"]):
        where = where[1:]
    param = ".".join(["body", *where]) if where else "body"
    detail = exc.detail
    if detail.startswith("params."):
        detail = "body." + detail.removeprefix("params.")
    return LineError("invalid_request", detail, param)
