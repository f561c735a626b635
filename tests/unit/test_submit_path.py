"""The submit path's per-request work (docs/performance.md, "Session 5: submit CPU"): what
FastAPI solves for `POST /v1/jobs`, the thread it runs in, the message it pushes, and how often
planning prices each model. The contract is pinned elsewhere (tests/integration)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import threading

import pytest
from fastapi.routing import APIRoute

import models.planning as planning
from api.routes import jobs
from api.threads import SUBMIT_THREADS, in_thread
from models.bulk_publish import _message, _template, push_job, single_message
from models.catalogue import load_catalogue
from models.planning import Defaults, plan_job
from models.queue import REQUEST_ID_HEADER, TASK_BY_KIND, queue_for
from models.schemas import JobCreate

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _dependants(dependant) -> list[str]:
    """Every dependency FastAPI solves for a route, the route's own function included."""
    names = [getattr(dependant.call, "__name__", type(dependant.call).__name__)]
    for sub in dependant.dependencies:
        names += _dependants(sub)
    return names


def _route(path: str, method: str) -> APIRoute:
    return next(
        r
        for r in jobs.router.routes
        if r.path == path and method in r.methods  # type: ignore
    )


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/batch"])
def test_a_submit_solves_the_key_and_nothing_else(path):
    # Given the submit routes, When FastAPI solves their dependencies per request
    names = _dependants(_route(path, "POST").dependant)
    # Then it runs the route, the key and the bearer header (the services are read off the
    # request: a solved dependency each, twice, before)
    assert sorted(names) == sorted([names[0], "current_key", "HTTPBearer"])


def test_a_submit_thread_runs_in_the_callers_context():
    # Given a context variable set by the caller (as the request id is)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def work(a: int, *, b: int) -> tuple[str, str, int]:
        return threading.current_thread().name, var.get(), a + b

    async def call() -> tuple[str, str, int]:
        var.set("req-9")
        return await in_thread(work, 1, b=2)

    # When the work hops to a submit thread, Then it sees the caller's context there
    name, seen, total = asyncio.run(call())
    assert name.startswith("genq-submit")
    assert (seen, total) == ("req-9", 3)
    assert SUBMIT_THREADS == 40  # anyio's default limit, which the submit had


def test_a_submit_threads_error_reaches_the_caller():
    def fail() -> None:
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        asyncio.run(in_thread(fail))


@pytest.mark.parametrize("request_id", [None, "req-7", "a/b+c=d:e.f", 'q"uo\\te'])
@pytest.mark.parametrize("kind", sorted(TASK_BY_KIND))
def test_a_single_message_is_the_rendered_template_text(kind, request_id):
    # Given the message the full template renders for a job (its ids aside)
    queue = queue_for(kind)
    rendered = _message(_template(TASK_BY_KIND[kind], queue, request_id), "ab" * 16)
    # When the single job's message is filled into its template rendered once
    got_queue, message = single_message(job_id="ab" * 16, kind=kind, request_id=request_id)
    # Then it is the same text, byte for byte but for its fresh ids
    assert got_queue == queue
    assert UUID.sub("U", message) == UUID.sub("U", rendered)
    headers = json.loads(message)["headers"]
    assert headers.get(REQUEST_ID_HEADER) == request_id
    assert not re.search(r"@[A-Z]+@", message)  # every placeholder filled


def test_each_single_message_has_its_own_ids():
    _, first = single_message(job_id="a" * 32, kind="text", request_id="r")
    _, second = single_message(job_id="a" * 32, kind="text", request_id="r")
    one, two = json.loads(first), json.loads(second)
    assert one["headers"]["id"] != two["headers"]["id"]
    assert one["headers"]["id"] == one["headers"]["root_id"] == one["properties"]["correlation_id"]
    for field in ("reply_to", "delivery_tag"):
        assert one["properties"][field] != two["properties"][field]


def test_push_job_pushes_the_single_message():
    class Client:
        def __init__(self) -> None:
            self.pushed: list[tuple[str, str]] = []

        def lpush(self, queue: str, message: str) -> None:
            self.pushed.append((queue, message))

    client = Client()
    assert push_job(client, job_id="c" * 32, kind="image", request_id=None) == "images"  # type: ignore[arg-type]
    queue, message = client.pushed[0]
    assert queue == "images"
    assert json.loads(message)["headers"]["task"] == TASK_BY_KIND["image"]


@pytest.fixture
def priced(monkeypatch) -> list[str]:
    """The models planning prices, one entry per `estimate_text` call."""
    seen: list[str] = []
    real = planning.estimate_text

    def counting(spec, **kwargs):
        seen.append(spec.id)
        return real(spec, **kwargs)

    monkeypatch.setattr(planning, "estimate_text", counting)
    return seen


def test_with_max_tokens_each_model_is_priced_once(priced):
    # Given a text request that caps its answer, When it is planned
    body = JobCreate(kind="text", prompt="hello", params={"max_tokens": 24})
    plan = plan_job(body, load_catalogue(), Defaults())
    # Then each text model is priced once (its worst case is also its size for comparing)
    texts = [spec.id for spec in load_catalogue() if spec.kind == "text"]
    assert sorted(priced) == sorted(texts)
    assert plan.routing.candidates


def test_without_max_tokens_models_are_compared_at_the_typical_size(priced):
    body = JobCreate(kind="text", prompt="hello")
    plan_job(body, load_catalogue(), Defaults())
    texts = [spec.id for spec in load_catalogue() if spec.kind == "text"]
    assert sorted(priced) == sorted(texts * 2)
