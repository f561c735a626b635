"""Request and response shapes of the public API (contract v1)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant"]
#: metadata is for the caller's bookkeeping, not for payloads
MAX_METADATA_KEYS = 32


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str = Field(min_length=1)


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class ImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: str = "1024x1024"
    n: int = Field(default=1, ge=1)
    quality: str | None = None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: Literal["economy", "balanced", "premium"] | None = None
    max_cost_usd: Decimal | None = Field(default=None, gt=0)


class JobCreate(BaseModel):
    """Body of `POST /v1/jobs`; `prompt` is shorthand for one user message."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["text", "image"]
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    policy: Policy = Field(default_factory=Policy)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: finish within this many seconds of submission or fail with `timeout`
    deadline_s: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> JobCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.kind == "image" and self.messages is not None:
            raise ValueError("image jobs take a `prompt`, not `messages`")
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds at most {MAX_METADATA_KEYS} keys")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation as the provider receives it."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
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
    cost_usd: float
    estimated_cost_usd: float | None
    error: ErrorPublic | None
    metadata: dict[str, Any]
    #: why this model: candidates considered, each rejection's reason, the choice, fallbacks
    routing: dict[str, Any] | None = None
    #: every provider call (GET /v1/jobs/{id} only): model, outcome, status, tokens, cost
    attempt_log: list[dict[str, Any]] | None = None
    created_at: str
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class JobBatch(BaseModel):
    """The jobs of one batch, in the order they were sent."""

    data: list[JobPublic]
