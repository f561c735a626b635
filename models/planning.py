"""From a validated request to a plan: model, routing record and cost estimate, or a clear 422."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ValidationError

from models.catalogue import Catalogue, ModelSpec, Tier
from models.errors import InvalidRequest
from models.policy import (
    TYPICAL_COMPLETION_TOKENS,
    Assessment,
    Assessor,
    Rejection,
    Routing,
    explicit,
    is_simple,
    route,
)
from models.pricing import estimate_image, estimate_text
from models.schemas import ImageParams, JobCreate, TextParams
from models.tokens import count_request, count_text

#: the encoding the "simple request" rule counts the prompt in (models/tokens.py's default)
DEFAULT_ENCODING = "o200k_base"


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """What the settings decide when a request does not."""

    tier: Tier = "balanced"
    deadline_s: int = 3600
    max_deadline_s: int = 86400


@dataclass(frozen=True, kw_only=True)
class Plan:
    spec: ModelSpec
    prompt_tokens: int
    estimated_cost_usd: Decimal
    routing: Routing
    #: the request's params with the defaults genq chose made explicit (e.g. image quality)
    params: dict


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, errors=[{"loc": ["body", *field.split(".")], "msg": message}])


def _params(request: JobCreate) -> TextParams | ImageParams:
    try:
        return request.text_params() if request.kind == "text" else request.image_params()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(["params", *_plain_loc(err["loc"])])
        message = err["msg"].removeprefix("Value error, ")
        raise _invalid(field, f"{field}: {message}") from None


#: pydantic names union members in an error's loc (`literal['none','auto']`, `NamedToolChoice`)
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|str|int|list\[.*\]|dict\[.*\]|[A-Z]\w*)$")


def _plain_loc(loc: tuple) -> list[str]:
    """The loc a client wrote: no union member names, no repeated discriminator tag."""
    parts: list[str] = []
    for part in map(str, loc):
        if not _UNION_MEMBER.match(part) and (not parts or parts[-1] != part):
            parts.append(part)
    return parts


def _needs(request: JobCreate, params: TextParams | ImageParams) -> frozenset[str]:
    """The catalogue capabilities the request uses: its kind, `tools`, `json_schema`."""
    needs = {request.kind}
    if isinstance(params, TextParams):
        if params.tools:
            needs.add("tools")
        if params.response_format is not None and params.response_format.type == "json_schema":
            needs.add("json_schema")
    return frozenset(needs)


def _prompt_counter(messages: list[dict], sent: dict) -> Callable[[str], int]:
    """The request's prompt tokens in an encoding, each encoding counted once per plan (the
    candidates of a tier mostly share one)."""
    counts: dict[str, int] = {}

    def count(encoding: str) -> int:
        if encoding not in counts:
            counts[encoding] = count_request(messages, sent, encoding)
        return counts[encoding]

    return count


def _text_assessor(params: TextParams, count: Callable[[str], int]) -> Assessor:
    """`count` counts the request as sent: its tools and schema are billed as prompt tokens."""

    def assess(spec: ModelSpec) -> Assessment:
        prompt = count(spec.encoding)
        estimate = estimate_text(spec, prompt_tokens=prompt, max_tokens=params.max_tokens)
        # with max_tokens the common output size is the worst case's: the same sum, done once
        typical = estimate
        if not params.max_tokens:
            typical = estimate_text(
                spec, prompt_tokens=prompt, max_tokens=TYPICAL_COMPLETION_TOKENS
            )
        limit = spec.max_output_tokens or 0
        rejection = None
        if params.max_tokens and params.max_tokens > limit:
            reason = f"max_tokens {params.max_tokens} exceeds {spec.id}'s limit of {limit}"
            rejection = Rejection("params.max_tokens", reason)
        elif prompt + (params.max_tokens or 0) > spec.context_window:
            reason = (
                f"prompt is {prompt} tokens; with max_tokens it exceeds "
                f"{spec.id}'s context window of {spec.context_window}"
            )
            rejection = Rejection("messages", reason)
        return Assessment(estimate=estimate, typical=typical, rejection=rejection)

    return assess


def _image_rejection(spec: ModelSpec, params: ImageParams, prompt: str) -> Rejection | None:
    if params.quality is not None and params.quality not in spec.image_prices:
        offered = "/".join(spec.image_prices)
        return Rejection("params.quality", f"{spec.id} offers quality {offered}")
    if spec.image_price(params.size, params.quality) is None:
        supported = ", ".join(spec.sizes)
        reason = f"size {params.size!r} is not supported by {spec.id}; supported: {supported}"
        return Rejection("params.size", reason)
    if params.n > spec.max_images:
        return Rejection("params.n", f"n must be between 1 and {spec.max_images} for {spec.id}")
    if len(prompt) > spec.context_window:
        reason = f"prompt is {len(prompt)} characters; {spec.id} accepts {spec.context_window}"
        return Rejection("prompt", reason)
    return None


def _image_assessor(request: JobCreate, params: ImageParams) -> Assessor:
    prompt = request.prompt or ""

    def assess(spec: ModelSpec) -> Assessment:
        rejection = _image_rejection(spec, params, prompt)
        if rejection is not None:
            return Assessment(rejection=rejection)
        tokens = count_text(prompt, spec.encoding) if spec.image_output_per_1m else 0
        estimate = estimate_image(
            spec, n=params.n, size=params.size, quality=params.quality, prompt_tokens=tokens
        )
        return Assessment(estimate=estimate, typical=estimate)

    return assess


def _explicit_spec(request: JobCreate, catalogue: Catalogue) -> ModelSpec:
    spec = catalogue.get(request.model or "")
    if spec is None:
        known = ", ".join(sorted(m.id for m in catalogue if m.kind == request.kind))
        raise _invalid("model", f"unknown model {request.model!r}; {request.kind} models: {known}")
    if spec.kind != request.kind:
        raise _invalid("model", f"model {spec.id!r} makes {spec.kind}, not {request.kind}")
    return spec


#: a memo of plans holds at most this many (it starts again when full)
MEMO_SIZE = 4_096


def plan_job(
    request: JobCreate, catalogue: Catalogue, defaults: Defaults, memo: dict | None = None
) -> Plan:
    """Choose and check the model under the cost policy; raises InvalidRequest with a reason.

    With `memo` (one per batch), a text request whose plan is decided by the same things as
    an earlier one's (model, policy, params, prompt tokens in each encoding) gets that plan
    without routing again: the same plan, as routing is a pure function of those.
    """
    params = _params(request)
    if request.deadline_s and request.deadline_s > defaults.max_deadline_s:
        raise _invalid("deadline_s", f"deadline_s may be at most {defaults.max_deadline_s}")
    if not isinstance(params, TextParams):
        assess = _image_assessor(request, params)
        return _decide(request, params, catalogue, defaults, assess=assess, prompt_tokens=0)
    sent = _dump(params)
    count = _prompt_counter(request.chat_messages(), sent)
    assess = _text_assessor(params, count)
    if memo is None:
        return _decide(
            request,
            params,
            catalogue,
            defaults,
            assess=assess,
            prompt_tokens=count(DEFAULT_ENCODING),
        )
    encodings = sorted({spec.encoding for spec in catalogue if spec.kind == "text"})
    key = (
        request.model,
        request.policy.tier or defaults.tier,
        request.policy.max_cost_usd,
        json.dumps(sent, sort_keys=True, default=str),
        tuple(count(name) for name in [DEFAULT_ENCODING, *encodings]),
    )
    if (plan := memo.get(key)) is None:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        plan = memo[key] = _decide(
            request,
            params,
            catalogue,
            defaults,
            assess=assess,
            prompt_tokens=count(DEFAULT_ENCODING),
        )
    return plan


def _decide(
    request: JobCreate,
    params: TextParams | ImageParams,
    catalogue: Catalogue,
    defaults: Defaults,
    *,
    assess: Assessor,
    prompt_tokens: int,
) -> Plan:
    """The routing decision and the plan it makes."""
    simple = isinstance(params, TextParams) and is_simple(
        kind="text", prompt_tokens=prompt_tokens, max_tokens=params.max_tokens
    )
    tier = request.policy.tier or defaults.tier
    ceiling = request.policy.max_cost_usd
    needs = _needs(request, params)
    if request.model:
        routing = explicit(
            spec=_explicit_spec(request, catalogue),
            tier=tier,
            ceiling=ceiling,
            simple=simple,
            assess=assess,
            needs=needs,
        )
    else:
        routing = route(
            kind=request.kind,
            needs=needs,
            tier=tier,
            ceiling=ceiling,
            simple=simple,
            catalogue=catalogue,
            assess=assess,
        )
    spec = catalogue.get(routing.chosen)
    if isinstance(params, ImageParams):  # ask for a known quality, billed as the catalogue says
        params = params.model_copy(update={"quality": spec.quality_or_default(params.quality)})
    return Plan(
        spec=spec,
        prompt_tokens=prompt_tokens,
        estimated_cost_usd=routing.estimate_usd,
        routing=routing,
        params=_dump(params),
    )


def _dump(params: BaseModel) -> dict:
    return params.model_dump(exclude_none=True)
