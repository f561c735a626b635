"""The live API against its own OpenAPI document, checked by schemathesis.

A real `genq api` process on a free port, a migrated SQLite database and the session's own
redis-server, an API key created for it; no worker (jobs stay queued). Schemathesis generates
requests from `/openapi.json` (its coverage phase: boundary and invalid values; its fuzzing
phase: random valid ones), sends them, and checks that no answer is a server error and that
every status, content type and body is one the document declares.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from models.catalogue import get_catalogue
from models.db import get_engine
from models.migrate import upgrade
from models.settings import Settings
from tests.helpers import FakeProvider, free_port, new_key, wait_until
from worker.retry import RetryPolicy
from worker.runner import Runner

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: bounded and deterministic: the same requests on every run
CONFIG = {"seed": 12, "generation": {"max-examples": 25}, "cache": {"enabled": False}}
BOUNDED = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass(frozen=True)
class LiveApi:
    url: str
    headers: dict[str, str]
    database_url: str


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, redis_url, tiktoken_dir) -> Iterator[LiveApi]:
    """`genq api` on a free port with its own SQLite database, stopped by PID at the end."""
    workdir = tmp_path_factory.mktemp("schemathesis")
    database_url = f"sqlite:///{workdir / 'genq.db'}"
    upgrade(database_url)
    secret = new_key(database_url, name="schemathesis")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": database_url,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
        "GENQ_PROVIDER": "offline",
    }
    port = free_port()
    with open(workdir / "api.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "api", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url, proc, workdir), what="the API")
        yield LiveApi(url, {"Authorization": f"Bearer {secret}"}, database_url)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _ready(url: str, proc: subprocess.Popen, workdir) -> bool:
    assert proc.poll() is None, (workdir / "api.log").read_text()
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _document() -> dict:
    """The document the code builds; the live API is checked to serve this very one.

    (Loaded at import: schemathesis' lazy `from_fixture` loader does not run under pytest 9.)
    """
    offline = Settings(_env_file=None, database_url="sqlite://", provider="offline")
    return create_app(offline).openapi()


DOCUMENT = _document()
#: a copy: schemathesis works on the dict it is given
schema = schemathesis.openapi.from_dict(
    copy.deepcopy(DOCUMENT), config=schemathesis.Config.from_dict(CONFIG)
)


def test_the_live_api_serves_the_document_under_test(live_api):
    assert httpx.get(f"{live_api.url}/openapi.json", timeout=10).json() == DOCUMENT


@schema.parametrize()
@BOUNDED
def test_every_answer_is_documented(case, live_api):
    # Given the key's Authorization header, when any request the document allows (or a
    # boundary or invalid one) is sent, then the answer is what the document says
    case.call_and_validate(base_url=live_api.url, headers=live_api.headers, checks=CHECKS)


@schema.include(path_regex="^/v1/").parametrize()
@BOUNDED
def test_without_a_key_every_v1_route_answers_a_documented_401(case, live_api):
    # Given no Authorization header, when any /v1 request is sent
    response = case.call_and_validate(base_url=live_api.url, checks=CHECKS)
    # Then it is the documented 401 problem, unless the request never reached a route: another
    # method (405), or a body that is not JSON at all (refused while parsing it, before the key)
    if case.method.upper() != case.operation.method.upper():
        assert response.status_code == 405, response.text
    elif isinstance(case.body, bytes) and not _is_json(case.body):
        assert response.status_code in (400, 422), response.text
    else:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == ["Bearer"]


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def image_job(live_api) -> str:
    """A succeeded image job of the key with two stored images (run in-process by the real
    Runner, the model faked), so its routes answer 200s, not only 404s."""
    body = {"kind": "image", "prompt": "a red fox", "params": {"size": "512x512", "n": 2}}
    answer = httpx.post(f"{live_api.url}/v1/jobs", json=body, headers=live_api.headers, timeout=10)
    assert answer.status_code == 202, answer.text
    runner = Runner(
        engine=get_engine(live_api.database_url),
        provider=FakeProvider(),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
    )
    assert runner.run(answer.json()["id"]) == "succeeded"
    return answer.json()["id"]


@schema.include(path_regex="{job_id}").parametrize()
@BOUNDED
def test_a_real_jobs_routes_answer_as_documented(case, live_api, image_job):
    # Given the id of a real, finished image job, when its routes are called with any other
    # parameters the document allows (any image index, …), then every answer is documented
    case.path_parameters["job_id"] = image_job
    case.call_and_validate(base_url=live_api.url, headers=live_api.headers, checks=CHECKS)


@pytest.fixture(scope="module")
def conversation(live_api) -> str:
    answer = httpx.post(
        f"{live_api.url}/v1/conversations",
        json={"system": "Be brief"},
        headers=live_api.headers,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@schema.include(path_regex="{conversation_id}").parametrize()
@BOUNDED
def test_a_real_conversations_routes_answer_as_documented(case, live_api, conversation):
    # Given the id of a real conversation of the key (messages, then maybe its deletion), when
    # its routes are called, then every answer is documented
    case.path_parameters["conversation_id"] = conversation
    case.call_and_validate(base_url=live_api.url, headers=live_api.headers, checks=CHECKS)
