"""Shapes of the answers that routes build as plain dicts, for the OpenAPI document.

These routes return their dicts as they are (`response_model=None`): the shapes document them
without re-validating or converting the answer, so the document cannot hide a difference;
the schemathesis test (`tests/e2e/test_schemathesis.py`) compares the two.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from models.catalogue import Capability, Kind, Tier

#: US dollars, as a JSON number (arithmetic stays in Decimal inside genq)
Usd = Annotated[float, Field(ge=0, description="US dollars")]
#: a member that is left out (never null) when it does not apply
Absent = SkipJsonSchema[None]


class ModelPublic(BaseModel):
    """One catalogue entry, as `GET /v1/models` shows it."""

    id: str
    kind: Kind
    tier: Tier
    provider: str
    capabilities: list[Capability]
    context_window: int
    #: text models only
    max_output_tokens: int | Absent = None
    input_per_1m: Usd
    cached_input_per_1m: Usd
    output_per_1m: Usd
    max_images: int
    #: quality -> size -> USD per image (image models)
    image_prices: dict[str, dict[str, Usd]]
    default_quality: str | Absent = None
    image_output_per_1m: Usd
    #: quality -> size -> output tokens per image (token-billed image models)
    image_tokens: dict[str, dict[str, int]]
    encoding: str
    rpm: int | Absent = None
    tpm: int | Absent = None


class ModelList(BaseModel):
    data: list[ModelPublic]


class UsageTotals(BaseModel):
    jobs: int
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Usd
    reserved_usd: Usd
    #: jobs that failed with `moderation_blocked` (flagged input or output under `block`)
    moderation_blocked: int
    #: jobs answered by the response cache, and what their provider calls would have cost
    cache_hits: int
    saved_usd: Usd


class UsageRow(UsageTotals):
    """One group; the member named by `group_by` holds the group's value."""

    model: str | Absent = None
    day: str | Absent = Field(default=None, description="YYYY-MM-DD")
    key: str | Absent = Field(default=None, description="the API key's id")
    status: str | Absent = None
    #: the key's name (`group_by=key`); null when the key is gone
    name: str | None = None


class UsageReport(BaseModel):
    group_by: Literal["model", "day", "key", "status"]
    data: list[UsageRow]
    total: UsageTotals


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    database: Literal["ok"]
    redis: Literal["ok"]
