"""`genq simulator`: the offline simulator served as an OpenAI-compatible HTTP API.

It lets the `openai` provider run through the real SDK over HTTP with no key and no network:
`/v1/chat/completions` (with usage; `tools`, `tool_choice` and `response_format` honoured as the
offline provider does), `/v1/images/generations` (`b64_json`), `/v1/moderations` (the
stand-in check of GENQ_OFFLINE_FLAGGED_WORDS), `/v1/models`, the same latency and fault
knobs, and 429 answers carrying `Retry-After`. Two control routes under
`/_simulator/` script the next outcomes and count calls, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from models.catalogue import Catalogue
from worker.providers.base import parse_size
from worker.providers.simulator import Fault, Simulator, draw_png, image_usage
from worker.simulator_stream import StreamOutcome, stream_answer


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def structured(self) -> dict[str, Any]:
        """The params the simulator's answer depends on."""
        limit = self.max_completion_tokens or self.max_tokens
        params = {"max_tokens": limit, "response_format": self.response_format}
        params |= {"tools": self.tools, "tool_choice": self.tool_choice}
        return {k: v for k, v in params.items() if v is not None}


class ImageRequest(BaseModel):
    model: str = "dall-e-2"
    prompt: str = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=10)
    size: str = "1024x1024"
    quality: str | None = None
    response_format: str | None = None


class ModerationRequest(BaseModel):
    model: str = "omni-moderation-latest"
    input: str | list[str] = Field(min_length=1)


def moderation_reply(simulator: Simulator, body: ModerationRequest) -> dict:
    """A moderation object as OpenAI's `/v1/moderations` answers, one result per text: the
    stand-in flags texts containing a word of GENQ_OFFLINE_FLAGGED_WORDS."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    results = []
    for text in texts:
        flagged, categories, scores = simulator.moderate(text)
        applied = {name: ["text"] for name in categories}
        results.append(
            {
                "flagged": flagged,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": applied,
            }
        )
    return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model, "results": results}


class Script(BaseModel):
    statuses: list[int] = Field(default_factory=list)
    #: JSON answers to give next: `invalid` (unparseable) or `valid`
    outputs: list[Literal["invalid", "valid"]] = Field(default_factory=list)
    #: how the next streamed answers go (worker/simulator_stream.py): ok, disconnect, …
    streams: list[StreamOutcome] = Field(default_factory=list)


def _error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error body, so the SDK raises the exception it would raise against OpenAI."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _fault_response(fault: Fault) -> JSONResponse:
    headers = None
    if fault.retry_after_s is not None:
        headers = {
            "retry-after": str(math.ceil(fault.retry_after_s)),
            "retry-after-ms": str(int(fault.retry_after_s * 1000)),
        }
    kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
    return _error(fault.status, fault.message, kind=kind, headers=headers)


async def _parse(request: Request, schema: type[BaseModel]) -> BaseModel | JSONResponse:
    try:
        return schema.model_validate(await request.json())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return _error(400, f"{where}: {err['msg']}")
    except ValueError:
        return _error(400, "request body is not valid JSON")


def chat_reply(
    simulator: Simulator, catalogue: Catalogue, body: ChatRequest
) -> dict | JSONResponse:
    """A chat.completion object with real token usage, or OpenAI's 404 for unknown models."""
    spec = catalogue.get(body.model)
    if spec is None or spec.kind != "text":
        return _error(404, f"The model `{body.model}` does not exist", kind="not_found")
    answer = simulator.answer(body.messages, body.structured(), encoding_name=spec.encoding)
    message = {"role": "assistant", "content": answer.text if not answer.tool_calls else None}
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    prompt_tokens, completion_tokens = answer.prompt_tokens, answer.completion_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": "genq-simulator",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def streamed_reply(
    simulator: Simulator, catalogue: Catalogue, body: ChatRequest, outcome: StreamOutcome
) -> StreamingResponse | JSONResponse:
    """The same answer as `chat_reply`, as `chat.completion.chunk` events."""
    spec = catalogue.get(body.model)
    if spec is None or spec.kind != "text":
        return _error(404, f"The model `{body.model}` does not exist", kind="not_found")
    answer = simulator.answer(body.messages, body.structured(), encoding_name=spec.encoding)
    chunks = stream_answer(
        answer,
        model=body.model,
        latency_ms=simulator.latency_ms,
        include_usage=bool((body.stream_options or {}).get("include_usage")),
        outcome=outcome,
    )
    return StreamingResponse(chunks, media_type="text/event-stream")


def _chat(
    simulator: Simulator, catalogue: Catalogue, body: ChatRequest, streams: deque[StreamOutcome]
) -> dict | JSONResponse | StreamingResponse:
    if body.stream:
        return streamed_reply(simulator, catalogue, body, streams.popleft() if streams else "ok")
    return chat_reply(simulator, catalogue, body)


async def image_reply(catalogue: Catalogue, body: ImageRequest) -> dict | JSONResponse:
    """Real PNGs of the requested size as `b64_json`."""
    spec = catalogue.get(body.model)
    if spec is None or spec.kind != "image":
        return _error(404, f"The model `{body.model}` does not exist", kind="not_found")
    if spec.image_price(body.size, body.quality) is None:
        return _error(400, f"size {body.size!r} is not supported by {body.model}")
    if body.response_format == "url":
        return _error(400, "the simulator answers with b64_json only")
    width, height = parse_size(body.size)
    pngs = await run_in_threadpool(
        lambda: [draw_png(body.prompt, width, height, i) for i in range(body.n)]
    )
    answer = {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(p).decode()} for p in pngs],
    }
    usage = image_usage(spec, body.prompt, n=body.n, size=body.size, quality=body.quality)
    if usage.completion_tokens:  # token-billed models report usage, as gpt-image-1 does
        answer["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"text_tokens": usage.prompt_tokens, "image_tokens": 0},
        }
    return answer


class Admitted:
    """A model call let in: its parsed body, or the error to answer with, and when it is due."""

    def __init__(self, body: BaseModel | JSONResponse, due: float | None):
        self.body, self.due = body, due

    async def answer(self, reply: Any) -> Any:
        """`reply` once the model's latency has passed since the request arrived.

        The reply is built while the simulated model "thinks" (a real model's latency includes
        its own work), so a call takes L plus only the HTTP and client time around it, not L
        plus the simulator's token counting and serialization on top.
        """
        if isinstance(reply, dict):  # plain JSON already: skip FastAPI's jsonable_encoder walk
            reply = JSONResponse(reply)
        if self.due is not None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(self.due - loop.time(), 0.0))
        return reply


def _admission(simulator: Simulator, calls: Counter[str]):
    """What every model route does first."""

    async def admit(request: Request, route: str, schema: type[BaseModel]) -> Admitted:
        """Count the call, check auth, draw a fault, parse the body; the answer is due the
        latency after arrival (a stream spreads it over its chunks instead)."""
        arrived = asyncio.get_running_loop().time()
        calls[route] += 1
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return Admitted(_error(401, "missing bearer token", kind="invalid_api_key"), None)
        body = await _parse(request, schema)
        if isinstance(body, JSONResponse):
            return Admitted(body, None)
        due = arrived + simulator.latency_ms / 1000
        if not simulator.latency_ms or getattr(body, "stream", False):
            due = None
        fault = simulator.next_fault()
        return Admitted(_fault_response(fault) if fault else body, due)

    return admit


class InFlight:
    """Model calls being answered right now, and the most at once since start or the last reset
    (what a benchmark of a worker's concurrency reads)."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            self.now -= 1


def _control_routes(
    app: FastAPI,
    simulator: Simulator,
    calls: Counter[str],
    flight: InFlight,
    streams: deque[StreamOutcome],
) -> None:
    """The `/_simulator/` routes of tests and benchmarks: script outcomes, read or reset counts."""

    @app.post("/_simulator/script")
    async def script(body: Script):
        """Queue exact outcomes (HTTP statuses, 200 = success; JSON answers) for the next calls."""
        simulator.script.extend(body.statuses)
        simulator.output_script.extend(body.outputs)
        streams.extend(body.streams)
        return {
            "queued": len(simulator.script),
            "outputs_queued": len(simulator.output_script),
            "streams_queued": len(streams),
        }

    @app.get("/_simulator/stats")
    async def stats():
        return {
            "calls": dict(calls),
            "scripted_left": len(simulator.script),
            "in_flight": flight.now,
            "peak_in_flight": flight.peak,
        }

    @app.post("/_simulator/stats/reset")
    async def reset_stats():
        """Start counting calls and the in-flight peak afresh (between benchmark phases)."""
        calls.clear()
        flight.peak = flight.now
        return {"in_flight": flight.now}


def create_simulator_app(simulator: Simulator, catalogue: Catalogue) -> FastAPI:
    """The HTTP face of `simulator`; `catalogue` decides which model names exist."""
    app = FastAPI(title="genq simulator (synthetic outputs)")
    calls: Counter[str] = Counter()
    streams: deque[StreamOutcome] = deque()
    admit = _admission(simulator, calls)
    flight = InFlight()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        with flight.call():  # a streamed answer counts until its headers are sent
            admitted = await admit(request, "chat", ChatRequest)
            body = admitted.body
            if isinstance(body, JSONResponse):
                return await admitted.answer(body)
            return await admitted.answer(_chat(simulator, catalogue, body, streams))

    @app.post("/v1/images/generations")
    async def images(request: Request):
        with flight.call():
            admitted = await admit(request, "images", ImageRequest)
            body = admitted.body
            if isinstance(body, JSONResponse):
                return await admitted.answer(body)
            return await admitted.answer(await image_reply(catalogue, body))

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        admitted = await admit(request, "moderations", ModerationRequest)
        body = admitted.body
        if isinstance(body, JSONResponse):
            return await admitted.answer(body)
        return await admitted.answer(moderation_reply(simulator, body))

    @app.get("/v1/models")
    async def models():
        data = [
            {"id": m.id, "object": "model", "created": 0, "owned_by": "genq-simulator"}
            for m in catalogue
        ]
        return {"object": "list", "data": data}

    _control_routes(app, simulator, calls, flight, streams)
    return app
