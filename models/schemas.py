"""Request and response shapes of the public API (contract v1)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.jsontext import MoneyNumber
from models.moderation import Mode, ModerationPublic
from models.structured import ResponseFormat, Tool, ToolCall, ToolChoice, tool_choice_problem
from models.webhook_urls import MAX_URL_LENGTH, syntax_problem

Role = Literal["system", "developer", "user", "assistant", "tool"]
#: metadata is for the caller's bookkeeping, not for payloads
MAX_METADATA_KEYS = 32
#: OpenAI's limits: at most 4 stop sequences, 128 tools
MAX_STOP = 4
MAX_TOOLS = 128
#: a cached answer is reused for at most a year
MAX_CACHE_TTL_S = 31_536_000


class Message(BaseModel):
    """One chat message; an assistant message may carry `tool_calls` (its content may then be
    null), and a `tool` message answers one of them by `tool_call_id`."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = Field(default=None, min_length=1)
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        if self.content is None and self.tool_calls is None:
            raise ValueError("content is required (it may be null only with tool_calls)")
        return self


def _check_tool_rounds(messages: list[Message]) -> None:
    """Every tool message answers a call an earlier assistant message made."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        called.update(call.id for call in message.tool_calls or ())
        if message.role == "tool" and message.tool_call_id not in called:
            raise ValueError(
                f"messages.{index}: tool_call_id {message.tool_call_id!r} answers no tool call "
                "of an earlier assistant message"
            )


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    #: `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {…}}` or text
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_STOP:
            raise ValueError(f"stop holds 1 to {MAX_STOP} strings")
        return value

    @model_validator(mode="after")
    def _tools_agree(self) -> TextParams:
        if self.tools is None and self.tool_choice is None:  # plain jobs: nothing to compare
            return self
        problem = tool_choice_problem(self.tools, self.tool_choice)
        if problem:
            raise ValueError(problem)
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools must have distinct function names")
        return self

    @property
    def structured(self) -> bool:
        """Whether this request uses anything beyond plain text generation."""
        return self.tools is not None or self.response_format is not None


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: str = "1024x1024"
    n: int = Field(default=1, ge=1)
    quality: str | None = None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: Literal["economy", "balanced", "premium"] | None = None
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    #: check input and text output with the moderation model (default: the key's, else
    #: GENQ_MODERATION); resolved at submit and stored with the job
    moderation: Mode | None = None
    #: answer from a succeeded identical job of the key at most this old (0: off; unset:
    #: GENQ_CACHE_TTL_S)
    cache_ttl_s: int | None = Field(default=None, ge=0, le=MAX_CACHE_TTL_S)


def _one_input_schema(schema: dict[str, Any]) -> None:
    """What `JobCreate._one_input` enforces, said in JSON Schema: exactly one of a non-null
    `prompt` or `messages` (`messages` for text jobs only), and at most 32 metadata keys."""

    def given(name: str, kind: str) -> dict[str, Any]:
        return {"required": [name], "properties": {name: {"type": kind}}}

    schema["oneOf"] = [
        {**given("prompt", "string"), "not": given("messages", "array")},
        {
            **given("messages", "array"),
            "not": given("prompt", "string"),
            "properties": {"messages": {"type": "array"}, "kind": {"const": "text"}},
        },
    ]
    schema["properties"]["metadata"]["maxProperties"] = MAX_METADATA_KEYS


class JobCreate(BaseModel):
    """Body of `POST /v1/jobs`; `prompt` is shorthand for one user message."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_input_schema)

    kind: Literal["text", "image"]
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    policy: Policy = Field(default_factory=Policy)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: finish within this many seconds of submission or fail with `timeout`
    deadline_s: int | None = Field(default=None, ge=1)
    #: POSTed the job's end, signed (README "Webhooks"); else the key's default, if any
    webhook_url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    #: text jobs: generate with the provider's streaming call and publish the text as it comes
    #: (`GET /v1/jobs/{id}/events`); unset and false are the same
    stream: bool | None = Field(
        default=None,
        description="Text jobs: publish the text as it is generated, as `delta` events of "
        "`GET /v1/jobs/{id}/events`.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> JobCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.kind == "image" and self.messages is not None:
            raise ValueError("image jobs take a `prompt`, not `messages`")
        if self.kind == "image" and self.stream:
            raise ValueError("`stream` is for text jobs; an image job has no text to stream")
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds at most {MAX_METADATA_KEYS} keys")
        if self.messages is not None:
            _check_tool_rounds(self.messages)
        return self

    @field_validator("webhook_url")
    @classmethod
    def _webhook_syntax(cls, value: str | None) -> str | None:
        """The URL's form only; where it points is checked at submit (api/submit.py)."""
        if value is not None and (problem := syntax_problem(value)):
            raise ValueError(f"webhook_url {problem}")
        return value

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation as the provider receives it (unset fields left out)."""
        if self.messages is not None:
            return [m.model_dump(exclude_none=True) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def text_params(self) -> TextParams:
        return TextParams.model_validate(self.params)

    def image_params(self) -> ImageParams:
        return ImageParams.model_validate(self.params)


#: jobs one `POST /v1/jobs/batch` may carry (the body size limit applies as well)
MAX_BATCH_JOBS = 100


class JobBatchCreate(BaseModel):
    """Body of `POST /v1/jobs/batch`: jobs accepted or refused together, in one transaction."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobCreate] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


class UsagePublic(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ErrorPublic(BaseModel):
    type: str
    message: str


class DroppedTurn(BaseModel):
    """A turn of the conversation left out of a job's prompt to fit the context budget."""

    index: int
    role: str
    job_id: str
    tokens: int


class ContextPublic(BaseModel):
    """What of its conversation a job sent: turns stored before it, turns sent, the ones left
    out (oldest first) and the prompt's tokens as sent (tiktoken, per-message overhead included)."""

    turns_total: int
    turns_sent: int
    dropped_turns: list[DroppedTurn]
    prompt_tokens: int
    budget_tokens: int


class AttemptPublic(BaseModel):
    """One provider call in a job's `attempt_log`."""

    number: int
    model: str
    provider: str | None
    worker: str | None
    outcome: str
    http_status: int | None
    error_type: str | None
    latency_ms: int | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: MoneyNumber
    started_at: str | None


class CachePublic(BaseModel):
    """A job with the response cache on: `hit` when its output came from `source_job_id`
    without a provider call (`saved_usd`: what that call cost); a job waiting on, or failed
    with, an identical job names it with `hit` false."""

    hit: bool
    source_job_id: str | None
    saved_usd: MoneyNumber


class JobPublic(BaseModel):
    """The job object every route returns."""

    id: str
    kind: str
    status: str
    model: str
    provider: str | None
    attempts: int
    output: dict[str, Any] | None
    usage: UsagePublic
    cost_usd: MoneyNumber
    estimated_cost_usd: MoneyNumber | None
    error: ErrorPublic | None
    metadata: dict[str, Any]
    #: why this model: candidates considered, each rejection's reason, the choice, fallbacks
    routing: dict[str, Any] | None = None
    #: every provider call (GET /v1/jobs/{id} only): model, outcome, status, tokens, cost
    attempt_log: list[AttemptPublic] | None = None
    #: set on a conversation's jobs: which conversation, and which of its turns were sent
    conversation_id: str | None = None
    context: ContextPublic | None = None
    #: set on the jobs of an OpenAI-compatible batch: which batch, and the line's custom_id
    batch_id: str | None = None
    custom_id: str | None = None
    #: the moderation verdicts (jobs whose `policy.moderation` is flag or block)
    moderation: ModerationPublic | None = None
    #: set when the response cache was on for the job (README "Response cache")
    cache: CachePublic | None = None
    created_at: str
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class JobBatch(BaseModel):
    """The jobs of one batch, in the order they were sent."""

    data: list[JobPublic]
