"""API and Celery worker processes with real Redis and databases, on the offline simulator."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from models.catalogue import get_catalogue
from models.pricing import Usage, cost_of
from tests.helpers import auth, new_key, wait_until

pytestmark = pytest.mark.e2e


def poll(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict:
    def finished():
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(finished, timeout_s=timeout_s, what=f"job {job_id}")


def test_text_and_image_jobs_run_end_to_end(stack, settings):
    # Given the API and one worker as separate processes
    url = stack.api()
    stack.worker()
    secret = new_key(settings.database_url)
    client = httpx.Client(base_url=url, headers=auth(secret), timeout=10)
    # When a text and an image job are submitted over HTTP
    text = client.post(
        "/v1/jobs", json={"kind": "text", "prompt": "Write a haiku", "params": {"max_tokens": 30}}
    )
    image = client.post(
        "/v1/jobs", json={"kind": "image", "prompt": "a red fox", "params": {"size": "256x256"}}
    )
    assert text.status_code == image.status_code == 202
    # Then both succeed, with synthetic output, real token counts and the exact cost
    done = poll(client, text.json()["id"])
    assert done["status"] == "succeeded" and done["provider"] == "offline"
    assert done["output"]["text"].startswith("[synthetic]")
    usage = done["usage"]
    assert 0 < usage["completion_tokens"] <= 30 and usage["prompt_tokens"] > 0
    spec = get_catalogue().get(done["model"])
    expected = cost_of(
        spec,
        Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]),
    )
    assert Decimal(str(done["cost_usd"])) == expected
    picture = poll(client, image.json()["id"])
    assert picture["status"] == "succeeded" and picture["cost_usd"] == 0.016
    png = client.get(picture["output"]["images"][0]["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # And no secret reaches the logs
    assert secret not in stack.all_logs()


def test_failing_model_call_marks_the_job_failed_with_the_reason(stack, settings):
    url = stack.api()
    stack.worker(env={"GENQ_OFFLINE_FAULTS": "400:1"})
    client = httpx.Client(base_url=url, headers=auth(new_key(settings.database_url)), timeout=10)
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": "x"}).json()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["type"] == "provider_error"
    assert "simulated 400" in failed["error"]["message"]
