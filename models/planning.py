"""From a validated request to a plan: model, prompt size and cost estimate, or a clear 422."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import ValidationError

from models.catalogue import Catalogue, ModelSpec
from models.errors import InvalidRequest
from models.policy import Defaults, choose_model
from models.pricing import estimate_image, estimate_text
from models.schemas import JobCreate
from models.tokens import count_messages


@dataclass(frozen=True, kw_only=True)
class Plan:
    spec: ModelSpec
    prompt_tokens: int
    estimated_cost_usd: Decimal
    #: the request's params with defaults genq decided made explicit (e.g. image quality)
    params: dict


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, errors=[{"loc": ["body", *field.split(".")], "msg": message}])


def _params_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    field = ".".join(["params", *(str(p) for p in err["loc"])])
    return _invalid(field, f"{field}: {err['msg']}")


def _plan_text(request: JobCreate, spec: ModelSpec) -> Plan:
    try:
        params = request.text_params()
    except ValidationError as exc:
        raise _params_error(exc) from None
    if params.max_tokens and spec.max_output_tokens and params.max_tokens > spec.max_output_tokens:
        raise _invalid(
            "params.max_tokens",
            f"max_tokens {params.max_tokens} exceeds {spec.id}'s limit of {spec.max_output_tokens}",
        )
    prompt_tokens = count_messages(request.chat_messages(), spec.encoding)
    if prompt_tokens + (params.max_tokens or 0) > spec.context_window:
        raise _invalid(
            "messages",
            f"prompt is {prompt_tokens} tokens; with max_tokens it exceeds "
            f"{spec.id}'s context window of {spec.context_window}",
        )
    estimate = estimate_text(spec, prompt_tokens=prompt_tokens, max_tokens=params.max_tokens)
    return Plan(
        spec=spec,
        prompt_tokens=prompt_tokens,
        estimated_cost_usd=estimate,
        params=params.model_dump(exclude_none=True),
    )


def _plan_image(request: JobCreate, spec: ModelSpec) -> Plan:
    try:
        params = request.image_params()
    except ValidationError as exc:
        raise _params_error(exc) from None
    if params.quality is not None and params.quality not in spec.image_prices:
        raise _invalid("params.quality", f"{spec.id} offers quality {list(spec.image_prices)}")
    if spec.image_price(params.size, params.quality) is None:
        raise _invalid(
            "params.size",
            f"size {params.size!r} is not supported by {spec.id}; "
            f"supported: {', '.join(spec.sizes)}",
        )
    if params.n > spec.max_images:
        raise _invalid("params.n", f"n must be between 1 and {spec.max_images} for {spec.id}")
    prompt = request.prompt or ""
    if len(prompt) > spec.context_window:
        raise _invalid(
            "prompt", f"prompt is {len(prompt)} characters; {spec.id} accepts {spec.context_window}"
        )
    # Ask for a known quality, so the provider bills what the catalogue prices.
    params = params.model_copy(update={"quality": spec.quality_or_default(params.quality)})
    estimate = estimate_image(spec, n=params.n, size=params.size, quality=params.quality)
    return Plan(
        spec=spec,
        prompt_tokens=0,
        estimated_cost_usd=estimate,
        params=params.model_dump(exclude_none=True),
    )


def plan_job(request: JobCreate, catalogue: Catalogue, defaults: Defaults) -> Plan:
    """Choose the model and check the request against it; raises InvalidRequest with a reason."""
    spec = choose_model(request, catalogue, defaults)
    plan = _plan_text(request, spec) if request.kind == "text" else _plan_image(request, spec)
    ceiling = request.policy.max_cost_usd
    if ceiling is not None and plan.estimated_cost_usd > ceiling:
        raise _invalid(
            "policy.max_cost_usd",
            f"worst-case cost {plan.estimated_cost_usd} USD on {spec.id} exceeds "
            f"max_cost_usd {ceiling}",
        )
    return plan
