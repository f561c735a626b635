"""Per-model rate limits as data: requests and tokens per minute, from the catalogue and settings.

The catalogue may give a model `rpm` / `tpm` (the limits of the account genq calls with);
`GENQ_RATE_LIMITS` overrides them per model and per dimension, e.g.
`gpt-4o-mini=120rpm/200000tpm,dall-e-3=5rpm`. A dimension named nowhere is unlimited.
The worker's Redis limiter (worker/ratelimit_redis.py) enforces what `resolve_limits` returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.catalogue import ModelSpec

#: one limit: a positive integer followed by its unit, e.g. `120rpm`, `200000tpm`
_LIMIT = re.compile(r"^([1-9][0-9]*)(rpm|tpm)$")


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """Requests and tokens per minute one model may receive; None = no limit on that one."""

    rpm: int | None = None
    tpm: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def over(self, base: RateLimit) -> RateLimit:
        """This limit, with each dimension it leaves unset taken from `base`."""
        return RateLimit(
            rpm=self.rpm if self.rpm is not None else base.rpm,
            tpm=self.tpm if self.tpm is not None else base.tpm,
        )


def _parse_one(limits: str, part: str) -> RateLimit:
    values: dict[str, int] = {}
    for item in limits.split("/"):
        match = _LIMIT.match(item.strip().lower())
        if match is None:
            raise ValueError(f"{part!r}: each limit must look like 120rpm or 200000tpm")
        number, unit = match.groups()
        if unit in values:
            raise ValueError(f"{part!r}: {unit} is given twice")
        values[unit] = int(number)
    return RateLimit(**values)


def parse_rate_limits(spec: str) -> dict[str, RateLimit]:
    """Parse `model=120rpm/200000tpm,other=5rpm` into {model: RateLimit}."""
    parsed: dict[str, RateLimit] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        model, sep, limits = (s.strip() for s in part.partition("="))
        if not (model and sep and limits):
            raise ValueError(f"{part!r} is not MODEL=LIMITS (e.g. gpt-4o-mini=120rpm/200000tpm)")
        if model in parsed:
            raise ValueError(f"model {model!r} is listed twice")
        parsed[model] = _parse_one(limits, part)
    return parsed


def resolve_limits(
    catalogue: Iterable[ModelSpec], overrides: dict[str, RateLimit]
) -> dict[str, RateLimit]:
    """Every limited model: the catalogue's `rpm`/`tpm`, each overridden by the settings' value."""
    limits = {spec.id: RateLimit(rpm=spec.rpm, tpm=spec.tpm) for spec in catalogue}
    for model, limit in overrides.items():
        limits[model] = limit.over(limits.get(model, RateLimit()))
    return {model: limit for model, limit in limits.items() if limit}
