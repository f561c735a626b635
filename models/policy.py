"""The cost policy: which model runs a job, why, and what to fall back to.

Pure functions of the request, the catalogue and the settings' defaults, with no I/O, so every
rule is tested with tables. The rule, in words:

1. A model is a *candidate* when it makes the job's kind, has every capability the job needs
   (`tools`, `json_schema`: a model without one is listed as rejected with `no tools` etc.),
   accepts the request (context window, output limit, image size, quality, n) and its worst-case
   cost (every allowed output token) is at most `policy.max_cost_usd`.
2. Among candidates of the requested tier the cheapest wins, compared at the same output size
   (`max_tokens`, or TYPICAL_COMPLETION_TOKENS without one), so a model is not penalised for
   allowing longer answers. A *simple* request (a text job with at most SIMPLE_PROMPT_TOKENS
   prompt tokens and an explicit `max_tokens` of at most SIMPLE_MAX_TOKENS) may also use a model
   one tier lower.
3. No candidate there: the next cheaper tier is tried, down to economy; never a pricier tier.
4. Nothing at all: 422 naming the cheapest model over the ceiling and its estimate, or each
   model's reason.
5. An explicit `model` skips the choice but not the checks or the ceiling.
6. The fallback list: every other candidate of the requested tier or a cheaper one, nearest tier
   first, then cheapest first (a fallback never moves a job to a pricier tier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from models.catalogue import TIERS, Catalogue, ModelSpec, Tier
from models.errors import InvalidRequest
from models.money import money

#: a text request at most this long…
SIMPLE_PROMPT_TOKENS = 300
#: …that caps its answer at most this many tokens is simple enough for one tier lower
SIMPLE_MAX_TOKENS = 300
#: output size at which models are compared when a request sets no max_tokens
TYPICAL_COMPLETION_TOKENS = 500


@dataclass(frozen=True)
class Rejection:
    """Why a model cannot serve a request, and which request field is to blame."""

    field: str
    reason: str

    def error(self) -> InvalidRequest:
        loc = ["body", *self.field.split(".")]
        return InvalidRequest(self.reason, errors=[{"loc": loc, "msg": self.reason}])


@dataclass(frozen=True, kw_only=True)
class Assessment:
    """One model measured against one request."""

    estimate: Decimal | None = None  # worst case: checked against the ceiling and the budget
    typical: Decimal | None = None  # at a common output size: what "cheapest" compares
    rejection: Rejection | None = None


Assessor = Callable[[ModelSpec], Assessment]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    model: str
    tier: Tier
    assessment: Assessment

    @property
    def fits(self) -> bool:
        return self.assessment.rejection is None

    def record(self, note: str | None = None) -> dict:
        a = self.assessment
        reason = a.rejection.reason if a.rejection else note
        return {
            "model": self.model,
            "tier": self.tier,
            "estimate_usd": None if a.estimate is None else money(a.estimate),
            **({"rejected": reason} if reason else {}),
        }


@dataclass(frozen=True, kw_only=True)
class Routing:
    """Why a job runs on its model: stored with the job and shown by `GET /v1/jobs/{id}`."""

    mode: str  # "explicit" or "policy"
    tier: Tier
    max_cost_usd: Decimal | None
    simple: bool
    chosen: str
    estimate_usd: Decimal
    candidates: list[dict] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-ready; money as plain decimal strings so the record keeps its exact digits."""
        return {
            "mode": self.mode,
            "tier": self.tier,
            "simple": self.simple,
            "max_cost_usd": None if self.max_cost_usd is None else money(self.max_cost_usd),
            "chosen": self.chosen,
            "estimate_usd": money(self.estimate_usd),
            "candidates": self.candidates,
            "fallbacks": self.fallbacks,
        }


def is_simple(*, kind: str, prompt_tokens: int, max_tokens: int | None) -> bool:
    """Short prompt, short declared answer: classification, tagging, a subject line."""
    return (
        kind == "text"
        and prompt_tokens <= SIMPLE_PROMPT_TOKENS
        and max_tokens is not None
        and max_tokens <= SIMPLE_MAX_TOKENS
    )


def _with_ceiling(assessment: Assessment, ceiling: Decimal | None) -> Assessment:
    if assessment.rejection or ceiling is None or assessment.estimate <= ceiling:
        return assessment
    reason = f"worst case {money(assessment.estimate)} USD is over max_cost_usd {money(ceiling)}"
    return Assessment(
        estimate=assessment.estimate,
        typical=assessment.typical,
        rejection=Rejection("policy.max_cost_usd", reason),
    )


#: the request field that makes a job need each capability (for the 422's `loc`)
CAPABILITY_FIELDS = {"json_schema": "params.response_format", "tools": "params.tools"}


def missing_capability(spec: ModelSpec, needs: frozenset[str]) -> Rejection | None:
    """`no json_schema`, `no tools`…: what the model lacks of what the request uses."""
    missing = sorted(needs - spec.capabilities)
    if not missing:
        return None
    field = CAPABILITY_FIELDS.get(missing[0], "model")
    return Rejection(field, "no " + ", no ".join(missing))


def _assess_one(spec: ModelSpec, needs: frozenset[str], assess: Assessor, ceiling) -> Candidate:
    lacking = missing_capability(spec, needs)
    assessment = Assessment(rejection=lacking) if lacking else _with_ceiling(assess(spec), ceiling)
    return Candidate(model=spec.id, tier=spec.tier, assessment=assessment)


def _tier_plan(tier: Tier, simple: bool) -> list[set[Tier]]:
    """Tier sets to try in order: the tier (and one lower if simple), then each cheaper tier."""
    rank = TIERS.index(tier)
    first = {tier, *([TIERS[rank - 1]] if simple and rank > 0 else [])}
    return [first, *({t} for t in reversed(TIERS[:rank]) if t not in first)]


def _note(c: Candidate, best: Candidate, allowed: set[Tier], tier: Tier) -> str | None:
    """Why a fitting model other than the choice was not chosen."""
    if not c.fits or c.model == best.model:
        return None
    if TIERS.index(c.tier) > TIERS.index(tier):
        return f"tier {c.tier} is above the requested {tier}"
    if c.tier not in allowed:
        return f"tier {c.tier} not needed: a {'/'.join(sorted(allowed))} model fits"
    return f"costs more than {best.model}"


def _fallbacks(candidates: list[Candidate], chosen: str, tier: Tier) -> list[str]:
    rank = TIERS.index(tier)
    usable = [c for c in candidates if c.fits and c.model != chosen and TIERS.index(c.tier) <= rank]
    usable.sort(key=lambda c: (rank - TIERS.index(c.tier), c.assessment.typical))
    return [c.model for c in usable]


def route(
    *,
    kind: str,
    needs: frozenset[str],
    tier: Tier,
    ceiling: Decimal | None,
    simple: bool,
    catalogue: Catalogue,
    assess: Assessor,
) -> Routing:
    """The cheapest fitting model of the tier (one lower if simple), else of a cheaper tier."""
    specs = [s for s in catalogue if s.kind == kind]
    if not any(needs <= s.capabilities for s in specs):
        raise InvalidRequest(f"no {kind} model has the capabilities {sorted(needs)}")
    assessed = [_assess_one(s, needs, assess, ceiling) for s in specs]
    for allowed in _tier_plan(tier, simple):
        fitting = [c for c in assessed if c.fits and c.tier in allowed]
        if fitting:
            best = min(fitting, key=lambda c: c.assessment.typical)
            return Routing(
                mode="policy",
                tier=tier,
                max_cost_usd=ceiling,
                simple=simple,
                chosen=best.model,
                estimate_usd=best.assessment.estimate,
                candidates=[c.record(_note(c, best, allowed, tier)) for c in assessed],
                fallbacks=_fallbacks(assessed, best.model, tier),
            )
    raise _nothing_fits(assessed, tier, ceiling)


def _nothing_fits(assessed: list[Candidate], tier: Tier, ceiling: Decimal | None) -> InvalidRequest:
    """422 naming the cheapest model over the ceiling, or each reachable model's reason."""
    reachable = [c for c in assessed if TIERS.index(c.tier) <= TIERS.index(tier)]
    rejections = [(c, c.assessment.rejection) for c in reachable]
    over = [c for c, r in rejections if r.field == "policy.max_cost_usd"]
    if over:
        cheapest = min(over, key=lambda c: c.assessment.estimate)
        detail = (
            f"no {tier} model fits max_cost_usd {money(ceiling)}: the cheapest candidate, "
            f"{cheapest.model}, would cost up to {money(cheapest.assessment.estimate)} USD"
        )
        return Rejection("policy.max_cost_usd", detail).error()
    fields = {r.field for _, r in rejections}
    reasons = "; ".join(f"{c.model}: {r.reason}" for c, r in rejections)
    detail = f"no model of tier {tier} or cheaper can serve this request ({reasons})"
    return Rejection(fields.pop() if len(fields) == 1 else "policy.tier", detail).error()


def explicit(
    *,
    spec: ModelSpec,
    tier: Tier,
    ceiling: Decimal | None,
    simple: bool,
    assess: Assessor,
    needs: frozenset[str] = frozenset(),
) -> Routing:
    """The caller named the model: check it, keep the ceiling, offer no fallbacks."""
    lacking = missing_capability(spec, needs)
    if lacking is not None:
        raise Rejection(lacking.field, f"model {spec.id!r} has {lacking.reason}").error()
    candidate = _assess_one(spec, needs, assess, ceiling)
    rejection = candidate.assessment.rejection
    if rejection is not None:
        if rejection.field == "policy.max_cost_usd":
            rejection = Rejection(
                rejection.field,
                f"worst-case cost {money(candidate.assessment.estimate)}"
                f" USD on {spec.id} exceeds max_cost_usd {money(ceiling)}",
            )
        raise rejection.error()
    return Routing(
        mode="explicit",
        tier=tier,
        max_cost_usd=ceiling,
        simple=simple,
        chosen=spec.id,
        estimate_usd=candidate.assessment.estimate,
        candidates=[candidate.record()],
    )
