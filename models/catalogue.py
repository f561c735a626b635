"""The model catalogue: prices and limits, loaded from a TOML data file (never from code)."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.errors import CatalogueError

Kind = Literal["text", "image"]
Tier = Literal["economy", "balanced", "premium"]
Capability = Literal["text", "image", "vision", "tools", "json_schema"]
#: cheapest first; the cost policy moves along this order
TIERS: tuple[Tier, ...] = ("economy", "balanced", "premium")
PER_MILLION = Decimal(1_000_000)


class ModelSpec(BaseModel):
    """One catalogue entry: what a model costs and what it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    kind: Kind
    tier: Tier
    provider: str = "openai"
    #: what the model can do; a job only goes to a model with every capability it needs
    capabilities: frozenset[Capability] = frozenset()
    #: another OpenAI-compatible endpoint for this model, and the env var that holds its key
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    context_window: int = Field(gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    input_per_1m: Decimal = Field(default=Decimal(0), ge=0)
    cached_input_per_1m: Decimal = Field(default=Decimal(0), ge=0)
    output_per_1m: Decimal = Field(default=Decimal(0), ge=0)
    max_images: int = Field(default=1, ge=1)
    #: quality -> size -> USD per image
    image_prices: dict[str, dict[str, Decimal]] = Field(default_factory=dict)
    #: the quality genq asks for (and bills) when a request names none; else the first listed
    default_quality: str | None = None
    #: models that bill images as output tokens (gpt-image-1): USD per 1M image tokens, and
    #: quality -> size -> tokens per image, used for estimates
    image_output_per_1m: Decimal = Field(default=Decimal(0), ge=0)
    image_tokens: dict[str, dict[str, int]] = Field(default_factory=dict)
    encoding: str = "o200k_base"
    #: the account's requests / tokens per minute for this model, enforced across all workers
    #: (GENQ_RATE_LIMITS overrides them); unset = unlimited
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _kind_has_prices(self) -> ModelSpec:
        if self.kind == "text" and self.max_output_tokens is None:
            raise ValueError("text models need max_output_tokens")
        if self.kind == "image" and not self.image_prices:
            raise ValueError("image models need image_prices")
        if self.default_quality is not None and self.default_quality not in self.image_prices:
            raise ValueError(f"default_quality {self.default_quality!r} has no image_prices")
        return self

    @model_validator(mode="before")
    @classmethod
    def _kind_is_a_capability(cls, data: dict) -> dict:
        if isinstance(data, dict) and "kind" in data:
            data = {**data, "capabilities": {*data.get("capabilities", ()), data["kind"]}}
        return data

    @property
    def tier_rank(self) -> int:
        return TIERS.index(self.tier)

    def image_token_count(self, size: str, quality: str | None) -> int | None:
        """Output tokens one image costs on token-billed models, if the catalogue says."""
        return self.image_tokens.get(self.quality_or_default(quality), {}).get(size)

    @property
    def sizes(self) -> list[str]:
        """Every size any quality of this model supports, in catalogue order."""
        return list(dict.fromkeys(s for q in self.image_prices.values() for s in q))

    def quality_or_default(self, quality: str | None) -> str:
        """The requested quality, else the catalogue's default, else the first one listed."""
        return quality or self.default_quality or next(iter(self.image_prices))

    def image_price(self, size: str, quality: str | None) -> Decimal | None:
        """USD per image, or None when the model does not offer this size/quality."""
        return self.image_prices.get(self.quality_or_default(quality), {}).get(size)

    def public(self) -> dict:
        """The catalogue entry as `GET /v1/models` shows it: prices stay Decimal, written as
        plain JSON numbers by models/jsontext.py."""
        data = self.model_dump(exclude_none=True, exclude={"api_key_env", "base_url"})
        data["capabilities"] = sorted(self.capabilities)
        return data


class Catalogue:
    """All known models by id."""

    def __init__(self, specs: dict[str, ModelSpec]):
        self._specs = specs

    def get(self, model_id: str) -> ModelSpec | None:
        return self._specs.get(model_id)

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs


def _read(text: str, source: str) -> dict[str, dict]:
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict):
        raise CatalogueError(f"{source}: expected a [models.<id>] table")
    return models


def _line_of(text: str, model_id: str) -> int | None:
    """The line of the `[models."id"]` header, so an error can point at it."""
    header = re.compile(rf'^[ \t]*\[\s*models\s*\.\s*("?){re.escape(model_id)}\1\s*\]', re.M)
    match = header.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _build(text: str, source: str) -> dict[str, ModelSpec]:
    """Validate every entry of one file; the first bad one names file, line, model and field."""
    specs = {}
    for model_id, entry in _read(text, source).items():
        try:
            specs[model_id] = ModelSpec(id=model_id, **entry)
        except (ValidationError, TypeError) as exc:
            line = _line_of(text, model_id)
            where = f"{source}, line {line}" if line else source
            raise CatalogueError(f"{where}: model {model_id!r}: {_first_error(exc)}") from None
    return specs


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "entry"
        return f"{loc}: {err['msg']}"
    return str(exc)


def load_catalogue(extra_path: Path | None = None) -> Catalogue:
    """Built-in catalogue, extended or overridden entry by entry by the file at `extra_path`."""
    builtin = resources.files("models.data").joinpath("catalogue.toml").read_text()
    specs = _build(builtin, "built-in catalogue")
    if extra_path is not None:
        try:
            text = Path(extra_path).read_text()
        except OSError as exc:
            raise CatalogueError(f"{extra_path}: {exc.strerror}") from None
        specs |= _build(text, str(extra_path))
    return Catalogue(specs)


@lru_cache
def get_catalogue(extra_path: Path | None = None) -> Catalogue:
    """Cached catalogue for the process."""
    return load_catalogue(extra_path)
