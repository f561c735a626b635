"""Image answers in every form OpenAI-compatible servers use, through the real `openai` SDK over
HTTP (a fake server on loopback), the real Runner and its retries, a real database, and the API."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.attempts import Attempt
from models.db import get_engine, session_scope
from models.jobs import Job
from models.keys import create_key
from tests.fake_images import (
    GIF,
    JPEG,
    PNG,
    SIGNATURE,
    SVG_SIZED,
    SVG_UNSIZED,
    SVG_VIEWBOX,
    WEBP,
    fake_images_server,
)
from tests.helpers import auth, quick_runner
from worker.image_fetch import ImageFetcher
from worker.providers.openai_provider import OpenAIProvider

PER_IMAGE = Decimal("0.016")  # dall-e-2 at 256x256
CAP = 16_384


@pytest.fixture
def fake():
    with fake_images_server() as server:
        yield server


@pytest.fixture
def runner(settings, fake):
    """The Runner over the openai provider, pointed at the fake, http allowed on loopback."""
    fetcher = ImageFetcher(max_bytes=CAP, timeout_s=5, schemes=frozenset({"http", "https"}))
    provider = OpenAIProvider(
        api_key="sk-test-images", base_url=f"{fake.url}/v1", timeout_s=5, images=fetcher
    )
    return quick_runner(settings.database_url, provider)


@pytest.fixture
def api(settings):
    with TestClient(create_app(settings)) as client:
        yield client


def run_image_job(settings, runner, scenario: str) -> tuple[str, dict[str, str]]:
    """Store a queued dall-e-2 job whose prompt names the fake's scenario, and run it."""
    with session_scope(get_engine(settings.database_url)) as session:
        key, secret = create_key(session, name="images")
        request = {"kind": "image", "prompt": scenario, "params": {"size": "256x256", "n": 1}}
        job = Job(key_id=key.id, kind="image", model="dall-e-2", request=request)
        session.add(job)
    runner.run(job.id)
    return job.id, auth(secret)


def attempts_of(settings, job_id: str) -> list[Attempt]:
    with session_scope(get_engine(settings.database_url)) as session:
        query = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)
        return list(session.exec(query))


@pytest.mark.parametrize(
    ("scenario", "data", "content_type", "size"),
    [
        ("b64-png", PNG, "image/png", (64, 48)),
        ("b64-jpeg", JPEG, "image/jpeg", (40, 30)),
        ("b64-webp", WEBP, "image/webp", (20, 10)),
        ("b64-svg", SVG_SIZED, "image/svg+xml", (120, 80)),
        ("b64-svg-viewbox", SVG_VIEWBOX, "image/svg+xml", (300, 200)),
        ("b64-svg-unsized", SVG_UNSIZED, "image/svg+xml", None),
        ("url-png", PNG, "image/png", (64, 48)),
        ("data-base64", PNG, "image/png", (64, 48)),
        ("data-percent", SVG_VIEWBOX, "image/svg+xml", (300, 200)),
    ],
)
def test_each_form_is_stored_and_served_with_its_sniffed_type(
    settings, runner, api, scenario, data, content_type, size
):
    # Given a server answering in this form, when the job runs
    job_id, headers = run_image_job(settings, runner, scenario)
    # Then it succeeded in one billed attempt
    job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and Decimal(str(job["cost_usd"])) == PER_IMAGE
    # And its output shows the sniffed type, and the size when the format gives one
    (image,) = job["output"]["images"]
    expected = {"url": f"/v1/jobs/{job_id}/images/0", "content_type": content_type}
    if size:
        expected |= {"width": size[0], "height": size[1]}
    assert image == expected
    # And the API serves the very bytes with that Content-Type
    served = api.get(image["url"], headers=headers)
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == content_type
    assert served.headers["x-content-type-options"] == "nosniff"
    if content_type == "image/svg+xml":  # a script in it never runs with the API's origin
        assert "sandbox" in served.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("scenario", "data", "content_type"),
    [("url-flaky", GIF, "image/gif"), ("url-cut-once", JPEG, "image/jpeg")],
)
def test_a_failed_download_is_a_retried_attempt(
    settings, runner, api, fake, scenario, data, content_type
):
    # Given a link that answers 500, or is cut short, the first time
    job_id, headers = run_image_job(settings, runner, scenario)
    # Then the job succeeded on its second attempt, each generation billed
    job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    first, second = attempts_of(settings, job_id)
    assert (first.outcome, first.error_type) == ("retryable_error", "image_download_failed")
    assert second.outcome == "succeeded"
    assert first.cost_usd == second.cost_usd == PER_IMAGE
    assert Decimal(str(job["cost_usd"])) == 2 * PER_IMAGE
    # And the error names the host, never the signed link
    assert "127.0.0.1" in first.error and "sig=" not in first.error and "/files/" not in first.error
    served = api.get(job["output"]["images"][0]["url"], headers=headers)
    assert served.content == data and served.headers["content-type"] == content_type


@pytest.mark.parametrize(
    ("scenario", "error_type", "reason"),
    [
        ("url-404", "image_download_failed", "HTTP 404"),
        ("url-big", "image_too_large", "GENQ_IMAGE_DOWNLOAD_MAX_BYTES"),
        ("url-big-chunked", "image_too_large", "GENQ_IMAGE_DOWNLOAD_MAX_BYTES"),
        ("b64-garbage", "invalid_image", "not PNG, JPEG, WebP, GIF or SVG"),
        ("b64-html", "invalid_image", "not SVG (root element <html>)"),
    ],
)
def test_permanent_image_failures_fail_at_once_naming_the_reason(
    settings, runner, api, fake, scenario, error_type, reason
):
    job_id, headers = run_image_job(settings, runner, scenario)
    job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    # Then the job failed after its one (billed) attempt, with a type and a message that say why
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"]["type"] == error_type and reason in job["error"]["message"]
    assert SIGNATURE not in job["error"]["message"]
    (attempt,) = attempts_of(settings, job_id)
    assert attempt.outcome == "failed" and attempt.cost_usd == PER_IMAGE
    assert api.get(f"/v1/jobs/{job_id}/images/0", headers=headers).status_code == 404
    if scenario == "url-big":  # refused on its Content-Length, fetched once, not retried
        assert fake.hits["big.png"] == 1


def test_links_are_downloaded_over_https_only_unless_allowed(settings, api, fake):
    # Given the default schemes (https) and a server answering with an http link
    provider = OpenAIProvider(api_key="sk-test-images", base_url=f"{fake.url}/v1", timeout_s=5)
    runner = quick_runner(settings.database_url, provider)
    job_id, headers = run_image_job(settings, runner, "url-png")
    # Then the link is refused without a request, naming the setting
    job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "failed" and job["error"]["type"] == "image_url_refused"
    assert "GENQ_IMAGE_URL_SCHEMES" in job["error"]["message"]
    assert fake.hits["fox.png"] == 0


def test_logs_show_the_download_host_only(settings, runner, caplog):
    # Given HTTP client logging at its most verbose
    caplog.set_level(logging.DEBUG)
    run_image_job(settings, runner, "url-png")
    # Then the download is logged by host, and no line carries the link's path or signature
    lines = [record.getMessage() for record in caplog.records]
    assert any("127.0.0.1" in line and "/files/" not in line for line in lines)
    assert not [line for line in lines if "sig=" in line or "fox.png" in line]
