"""Stream jobs end to end: `genq api`, a `genq worker` on the `openai` provider (the real SDK
streaming from `genq simulator` over HTTP) and real Redis; events read with `httpx_sse`.

One stack for the module (started once): each test uses its own key.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from httpx_sse import connect_sse

from models.migrate import upgrade
from tests.e2e.conftest import Stack
from tests.helpers import auth, genq, new_key, text_of, wait_until

pytestmark = pytest.mark.e2e
OPENAI_KEY = "sk-test-stream-abcdefghijklmnopqrstuvwxyz0123456789"
#: the stack's API lets a key hold this many open streams
STREAM_LIMIT = 4


@dataclass
class Live:
    api: str
    sim: str
    database_url: str
    env: dict[str, str]

    def key(self) -> dict[str, str]:
        return auth(new_key(self.database_url))

    def submit(self, headers: dict[str, str], **body) -> str:
        body = {"kind": "text", "prompt": "Write about rivers", "stream": True, **body}
        answer = httpx.post(f"{self.api}/v1/jobs", json=body, headers=headers, timeout=10)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def job(self, headers: dict[str, str], job_id: str) -> dict:
        return httpx.get(f"{self.api}/v1/jobs/{job_id}", headers=headers, timeout=10).json()

    def script(self, *streams: str) -> None:
        httpx.post(
            f"{self.sim}/_simulator/script", json={"streams": list(streams)}
        ).raise_for_status()


@pytest.fixture(scope="module")
def live(tmp_path_factory, redis_url, tiktoken_dir) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("streaming")
    database_url = f"sqlite:///{workdir / 'genq.db'}"
    upgrade(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": database_url,
        "GENQ_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/7",
        "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
        "GENQ_RETRY_INITIAL_S": "0.01",
        "GENQ_RETRY_MAX_S": "0.05",
        "GENQ_MAX_STREAMS_PER_KEY": str(STREAM_LIMIT),
        "GENQ_SSE_POLL_S": "0.5",
        "GENQ_STREAM_STALL_TIMEOUT_S": "1",
    }
    stack = Stack(env=env, logs=workdir)
    try:
        sim = stack.simulator("--latency-ms", "1500")
        stack.worker(
            "worker",
            "-Q",
            "text",  # image jobs stay queued: streams that stay open as long as a test wants
            env={
                "GENQ_PROVIDER": "openai",
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_BASE_URL": f"{sim}/v1",
            },
        )
        yield Live(api=stack.api(), sim=sim, database_url=database_url, env=env)
    finally:
        stack.stop()


def read_events(
    live: Live, headers: dict, job_id: str, *, last_id: str | None = None, stop_after: int = 0
) -> list:
    """The events of one connection, until `done` (or after `stop_after` events)."""
    extra = {"Last-Event-ID": last_id} if last_id else {}
    seen = []
    with httpx.Client(base_url=live.api, timeout=30) as client:
        url = f"/v1/jobs/{job_id}/events"
        with connect_sse(client, "GET", url, headers={**headers, **extra}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for event in source.iter_sse():
                seen.append(event)
                if event.event == "done" or len(seen) == stop_after:
                    break
    return seen


def test_the_deltas_make_the_stored_text(live):
    headers = live.key()
    job_id = live.submit(headers, params={"max_tokens": 40})
    events = read_events(live, headers, job_id)
    done = events[-1]
    assert done.event == "done"
    job = live.job(headers, job_id)
    assert done.json()["output"] == job["output"] and job["status"] == "succeeded"
    assert text_of(events) == job["output"]["text"] != ""
    assert next(e.json() for e in events if e.event == "status") in (
        {"status": "queued"},
        {"status": "running"},
    )
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) and all(ids)
    # usage is the provider's own (include_usage), and the job is costed from it
    assert job["usage"]["completion_tokens"] > 0 and Decimal(str(job["cost_usd"])) > 0


def test_a_late_subscriber_and_a_reconnect_miss_nothing(live):
    headers = live.key()
    job_id = live.submit(headers, params={"max_tokens": 60})
    first = read_events(live, headers, job_id, stop_after=6)  # then the connection drops
    assert any(e.event == "delta" for e in first)
    late = {}
    joiner = threading.Thread(target=lambda: late.update(all=read_events(live, headers, job_id)))
    joiner.start()
    rest = read_events(live, headers, job_id, last_id=first[-1].id)
    joiner.join(timeout=30)
    job = live.job(headers, job_id)
    resumed = first + rest
    ids = [e.id for e in resumed]
    assert len(set(ids)) == len(ids)
    assert text_of(resumed) == job["output"]["text"] == text_of(late["all"])
    assert late["all"][-1].event == rest[-1].event == "done"


def test_after_the_end_done_comes_at_once(live):
    headers = live.key()
    job_id = live.submit(headers, params={"max_tokens": 10})
    read_events(live, headers, job_id)
    started = time.monotonic()
    events = read_events(live, headers, job_id)
    assert time.monotonic() - started < 1.0
    assert events[-1].event == "done" and events[-1].json()["status"] == "succeeded"
    # a plain job's stream (no deltas) ends with done at once too
    plain = httpx.post(
        f"{live.api}/v1/jobs", json={"kind": "text", "prompt": "plain"}, headers=headers
    ).json()["id"]
    wait_until(lambda: live.job(headers, plain)["status"] == "succeeded", what="the plain job")
    started = time.monotonic()
    events = read_events(live, headers, plain)
    assert time.monotonic() - started < 1.0
    assert [e.event for e in events] == ["status", "done"]


@pytest.mark.parametrize("breakage", ["disconnect", "truncate", "malformed", "stall"])
def test_a_broken_provider_stream_is_retried(live, breakage):
    headers = live.key()
    live.script(breakage)
    job_id = live.submit(headers, params={"max_tokens": 30})
    events = read_events(live, headers, job_id)
    job = live.job(headers, job_id)
    assert job["status"] == "succeeded", job
    retries = [e.json() for e in events if e.event == "retry"]
    assert retries == [{"attempt": 2, "model": job["model"]}]
    before = [e for e in events[: events.index(next(e for e in events if e.event == "retry"))]]
    assert any(e.event == "delta" for e in before)  # the broken attempt had started
    assert text_of(events) == job["output"]["text"] != ""
    log = job["attempt_log"]
    assert [a["outcome"] for a in log] == ["retryable_error", "succeeded"]
    expected_kind = "timeout" if breakage == "stall" else "stream_broken"
    assert log[0]["error_type"] == expected_kind
    # the broken attempt sent no usage: billed its prompt and the text received, counted
    assert log[0]["prompt_tokens"] > 0
    assert 0 < log[0]["completion_tokens"] < log[1]["completion_tokens"]
    costs = [Decimal(str(a["cost_usd"])) for a in log]
    assert costs[0] > 0 and Decimal(str(job["cost_usd"])) == sum(costs)
    usage = job["usage"]
    assert usage["completion_tokens"] == sum(a["completion_tokens"] for a in log)


def test_another_keys_job_is_404_and_a_bad_id_too(live):
    owner, other = live.key(), live.key()
    job_id = live.submit(owner, params={"max_tokens": 5})
    for headers, path in ((other, job_id), (owner, "no-such-job")):
        answer = httpx.get(f"{live.api}/v1/jobs/{path}/events", headers=headers, timeout=10)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"


def test_past_the_stream_limit_429(live):
    headers = live.key()
    job_id = queued_image(live, headers)
    url = f"/v1/jobs/{job_id}/events"
    with (
        httpx.Client(base_url=live.api, headers=headers, timeout=30) as client,
        ExitStack() as held,
    ):
        opened = [held.enter_context(client.stream("GET", url)) for _ in range(STREAM_LIMIT)]
        assert all(r.status_code == 200 for r in opened)
        with client.stream("GET", url) as refused:
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) > 0
        opened[0].close()  # a closed stream frees its slot
        wait_until(lambda: read_events(live, headers, job_id, stop_after=1), what="a free slot")


def queued_image(live: Live, headers: dict) -> str:
    """An image job no worker of this stack takes: it stays queued."""
    body = {"kind": "image", "prompt": "a lighthouse"}
    answer = httpx.post(f"{live.api}/v1/jobs", json=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_a_queued_job_cancelled_by_the_api_ends_its_stream(live):
    headers = live.key()
    job_id = queued_image(live, headers)
    seen: list = []
    with (
        httpx.Client(base_url=live.api, timeout=30) as client,
        connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source,
    ):
        for event in source.iter_sse():
            seen.append(event)
            if len(seen) == 1:  # queued: nothing will ever be written for this job
                assert event.json() == {"status": "queued"}
                client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).raise_for_status()
            if event.event == "done":
                break
    assert [e.event for e in seen] == ["status", "status", "done"]
    assert seen[-1].json()["status"] == "cancelled"


def test_a_cancel_during_a_stream_ends_with_done_cancelled(live):
    headers = live.key()
    job_id = live.submit(headers, params={"max_tokens": 200})
    seen: list = []
    with (
        httpx.Client(base_url=live.api, timeout=30) as client,
        connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source,
    ):
        for event in source.iter_sse():
            seen.append(event)
            if [e.event for e in seen].count("delta") == 3:
                cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
                assert cancel.status_code == 200, cancel.text
                cancelled_at = time.monotonic()
            if event.event == "done":
                break
    assert seen[-1].json()["status"] == "cancelled"
    assert time.monotonic() - cancelled_at < 3  # the stream stopped, it did not run to its end
    job = live.job(headers, job_id)
    assert job["status"] == "cancelled" and job["output"] is None
    # stopped mid-stream, before the provider's usage: billed the prompt and the text received
    [attempt] = job["attempt_log"]
    assert attempt["outcome"] == "cancelled"
    assert attempt["prompt_tokens"] > 0 and 0 < attempt["completion_tokens"] < 200
    cost = Decimal(str(attempt["cost_usd"]))
    assert cost > 0 and Decimal(str(job["cost_usd"])) == cost


def test_genq_submit_stream_prints_the_text_as_it_comes(live):
    secret = new_key(live.database_url)
    env = {**live.env, "GENQ_API_URL": live.api, "GENQ_API_KEY": secret}
    result = genq("submit", "Write a haiku", "--stream", "--max-tokens", "25", env=env)
    assert result.returncode == 0, result.stderr
    job = live.job(auth(secret), _job_id(result.stdout))
    text = job["output"]["text"]
    assert result.stdout.startswith(text + "\n")  # the streamed text, then the job as JSON


def _job_id(stdout: str) -> str:
    return json.loads(stdout[stdout.index("\n{") + 1 :])["id"]


def test_tool_calls_and_json_stream_through_the_sdk(live):
    headers = live.key()
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    called = live.submit(headers, params={"tools": [tool], "tool_choice": "required"})
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    formatted = live.submit(headers, params={"response_format": answer_format})
    done = read_events(live, headers, called)[-1].json()
    assert done["status"] == "succeeded", done
    [call] = done["output"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and done["output"]["finish_reason"] == (
        "tool_calls"
    )
    assert "city" in json.loads(call["function"]["arguments"])
    events = read_events(live, headers, formatted)
    job = events[-1].json()
    assert job["status"] == "succeeded", job
    assert json.loads(text_of(events)) == job["output"]["json"] and "n" in job["output"]["json"]
