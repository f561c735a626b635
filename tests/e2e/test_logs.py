"""Following one job through the logs of real processes, by the request id the API assigned.

Two workers split the queues: the text worker runs with the default (prompts withheld), the
image worker with GENQ_LOG_PROMPTS=true, so one stack shows both sides of that setting.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import auth, new_key, wait_until

#: the database does not matter to logging; SQLite keeps this quick
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]
TRACE = "trace-aardvark-1"
OPENAI_KEY = "sk-live-do-not-log-1234567890"
TEXT_PROMPT = "Slogan for the secret aardvark launch"
IMAGE_PROMPT = "an okapi wearing sunglasses"


def json_lines(text: str) -> list[dict]:
    """The structured lines of a process log (Celery's start-up banner is plain text)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def finished(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed") else None


@pytest.fixture
def client(stack, settings) -> httpx.Client:
    """The API and two workers, the image worker allowed to log prompts; a client with a key."""
    hidden = {"OPENAI_API_KEY": OPENAI_KEY}
    url = stack.api()
    stack.worker("text", "-Q", "text", env=hidden, wait=False)
    stack.worker("images", "-Q", "images", env={**hidden, "GENQ_LOG_PROMPTS": "true"}, wait=False)
    stack.ready("text")
    stack.ready("images")
    return httpx.Client(base_url=url, headers=auth(new_key(settings.database_url)), timeout=10)


def test_one_request_id_follows_a_job_across_processes_without_secrets(stack, client):
    # When a text job is submitted with a request id, and an image job without one
    text = client.post(
        "/v1/jobs",
        json={"kind": "text", "prompt": TEXT_PROMPT},
        headers={"X-Request-ID": TRACE},
    )
    image = client.post(
        "/v1/jobs",
        json={"kind": "image", "prompt": IMAGE_PROMPT, "params": {"size": "256x256"}},
    )
    assert text.headers["x-request-id"] == TRACE
    made_id = image.headers["x-request-id"]
    assert len(made_id) == 32
    job = wait_until(lambda: finished(client, text.json()["id"]), what="the text job")
    assert job["status"] == "succeeded"
    wait_until(lambda: finished(client, image.json()["id"]), what="the image job")

    # Then the API's lines and the worker's lines of the job carry the same request id
    api_lines = [x for x in json_lines(stack.log("api")) if x.get("request_id") == TRACE]
    assert {x["event"] for x in api_lines} >= {"job.enqueued", "http.request"}
    assert all(x["job_id"] == job["id"] for x in api_lines)
    worker_lines = [x for x in json_lines(stack.log("text")) if x.get("job_id") == job["id"]]
    assert {x["event"] for x in worker_lines} >= {"attempt.start", "job.succeeded"}
    for line in worker_lines:
        assert line["request_id"] == TRACE, line
        assert line["attempt"] == 1 and line["model"] == job["model"], line
    image_lines = [x for x in json_lines(stack.log("images")) if x.get("request_id") == made_id]
    assert {x["event"] for x in image_lines} >= {"attempt.start", "job.succeeded", "job.prompt"}

    # And no log holds an API key, the OpenAI key, or a prompt that was not allowed
    everything = stack.all_logs()
    secret = client.headers["authorization"].split()[1]
    assert secret not in everything and OPENAI_KEY not in everything
    assert TEXT_PROMPT not in everything
    assert [x["prompt"] for x in image_lines if x["event"] == "job.prompt"] == [IMAGE_PROMPT]
