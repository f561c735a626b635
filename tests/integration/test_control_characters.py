"""NUL and other control characters in every text a client sends, on both databases.

PostgreSQL's text columns refuse NUL (`\\u0000`) outright, so a NUL reaching one would be a
500; its `json` columns (not `jsonb`) keep the `\\u0000` escape. Each input is either stored
intact (JSON text: a prompt, messages, metadata), cleaned (an upload's filename), or refused
with a 4xx naming the field (a batch line's custom_id, a webhook_url, a conversation's text);
never a 500, and a refusal stores nothing.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from models.conversations import Conversation
from models.db import get_engine, session_scope
from models.errors import PermanentProviderError
from models.jobs import Job
from models.keys import create_key, rotate_webhook_secret
from tests.helpers import FakeProvider, auth
from tests.integration.batches_helpers import CHAT, chat_line, counts, create, jsonl, upload
from tests.integration.test_api_contract import assert_problem, run_all

NUL = "\u0000"


def stored_jobs(settings) -> int:
    with get_engine(settings.database_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(Job.__table__)).scalar_one()


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "text", "prompt": f"say{NUL}hi", "metadata": {"k": f"v{NUL}w"}},
        {"kind": "text", "messages": [{"role": "user", "content": f"a{NUL}b\u0007c"}]},
        {"kind": "image", "prompt": f"fox{NUL}"},
    ],
)
def test_a_job_with_a_nul_in_its_text_is_stored_intact(client, key, settings, body):
    answer = client.post("/v1/jobs", json=body, headers=key)
    assert answer.status_code == 202, answer.text
    with session_scope(get_engine(settings.database_url)) as session:
        job = session.get(Job, answer.json()["id"])
        for name in ("prompt", "messages"):
            if name in body:
                assert job.request[name] == body[name]
        assert job.meta == body.get("metadata", {})
    shown = client.get(f"/v1/jobs/{answer.json()['id']}", headers=key)
    assert shown.status_code == 200 and shown.json()["metadata"] == body.get("metadata", {})


def test_a_webhook_url_with_a_control_character_is_422_and_stores_nothing(settings):
    private = settings.model_copy(update={"webhook_allow_private": True})
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        key, api_secret = create_key(session, name="hooks")
    with session_scope(engine) as session:
        rotate_webhook_secret(session, ref=key.id)
    with TestClient(create_app(private)) as client:
        for url in (f"http://127.0.0.1:9/hook{NUL}", "http://127.0.0.1:9/h\u007fook"):
            body = {"kind": "text", "prompt": "hi", "webhook_url": url}
            answer = client.post("/v1/jobs", json=body, headers=auth(api_secret))
            problem = assert_problem(answer, 422)
            assert "webhook_url" in str(problem) and "control character" in str(problem), problem
    assert stored_jobs(settings) == 0


def _upload_raw(client, key, filename: bytes) -> str:
    """An upload whose part header carries `filename` byte for byte (an SDK would escape it)."""
    boundary = b"genqB0undary"
    body = b"".join(
        [
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n',
            b"batch\r\n--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n',
            b"Content-Type: application/jsonl\r\n\r\n" + jsonl(chat_line("a")) + b"\r\n",
            b"--" + boundary + b"--\r\n",
        ]
    )
    headers = {**key, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    answer = client.post("/v1/files", headers=headers, content=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def test_an_upload_whose_filename_holds_control_characters_keeps_a_cleaned_name(client, key):
    file_id = _upload_raw(client, key, b"in\x00put\x01\x7f.jsonl")
    assert client.get(f"/v1/files/{file_id}", headers=key).json()["filename"] == "input.jsonl"
    only_control = _upload_raw(client, key, b"\x00")
    shown = client.get(f"/v1/files/{only_control}", headers=key).json()
    assert shown["filename"] == "upload.jsonl"


def test_a_batch_line_whose_custom_id_holds_a_nul_fails_the_batch_naming_it(client, key, settings):
    file_id = upload(client, key, jsonl(chat_line("ok"), chat_line(f"b{NUL}ad")))
    answer = create(client, key, file_id)
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert batch["status"] == "failed"
    errors = [(e["code"], e["line"], e["param"]) for e in batch["errors"]["data"]]
    assert errors == [("invalid_value", 2, "custom_id")]
    assert counts(settings.database_url) == (1, 0)


def test_a_batch_line_with_a_nul_in_its_content_or_metadata_is_stored(client, key, settings):
    file_id = upload(client, key, jsonl(chat_line("a", content=f"x{NUL}y")))
    answer = create(client, key, file_id, metadata={"k": f"v{NUL}"})
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert batch["status"] == "in_progress" and batch["metadata"] == {"k": f"v{NUL}"}
    assert counts(settings.database_url) == (1, 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"system": f"be{NUL}kind", "model": "gpt-4o-mini"}, "system"),
        ({"system": "be kind", "model": "gpt-4o-mini", "metadata": {"k": NUL}}, None),
    ],
)
def test_a_conversation_with_a_nul_in_its_system_text_is_422_naming_it(
    client, key, settings, body, field
):
    answer = client.post("/v1/conversations", json=body, headers=key)
    if field is None:  # metadata is JSON: kept intact
        assert answer.status_code == 201, answer.text
        return
    problem = assert_problem(answer, 422)
    assert field in str(problem), problem
    with get_engine(settings.database_url).connect() as conn:
        stored = conn.execute(select(func.count()).select_from(Conversation.__table__))
        assert stored.scalar_one() == 0


def test_a_conversation_message_with_a_nul_is_422_and_adds_no_turn(client, key, settings):
    body = {"system": "be kind", "model": "gpt-4o-mini"}
    conversation = client.post("/v1/conversations", json=body, headers=key).json()["id"]
    answer = client.post(
        f"/v1/conversations/{conversation}/messages",
        json={"content": f"hi{NUL}"},
        headers=key,
    )
    problem = assert_problem(answer, 422)
    assert "content" in str(problem), problem
    assert stored_jobs(settings) == 0


#: (method, URL with a NUL, status): an id holding NUL is unknown (404, as on SQLite), a query
#: value holding one a 422 naming it; on PostgreSQL either was a DataError, a 500
NUL_URLS = [
    ("GET", "/v1/jobs/a%00b", 404),
    ("POST", "/v1/jobs/a%00b/cancel", 404),
    ("GET", "/v1/jobs/a%00b/events", 404),
    ("GET", "/v1/jobs/a%00b/webhooks", 404),
    ("GET", "/v1/jobs/a%00b/images/0", 404),
    ("GET", "/v1/files/file-%00", 404),
    ("GET", "/v1/files/file-%00/content", 404),
    ("DELETE", "/v1/files/file-%00", 404),
    ("GET", "/v1/batches/batch_%00", 404),
    ("POST", "/v1/batches/batch_%00/cancel", 404),
    ("GET", "/v1/conversations/c%00", 404),
    ("DELETE", "/v1/conversations/c%00", 404),
    ("GET", "/v1/jobs?batch_id=batch_%00", 422),
    ("GET", "/v1/files?after=file-%00", 422),
    ("GET", "/v1/batches?after=batch_%00", 422),
]


@pytest.mark.parametrize(("method", "url", "status"), NUL_URLS)
def test_a_nul_in_the_url_is_a_4xx_problem_never_a_500(client, key, method, url, status):
    problem = assert_problem(client.request(method, url, headers=key), status)
    assert "NUL" in problem["detail"]
    if status == 422:
        assert url.split("?")[1].split("=")[0] in problem["detail"]


def test_a_message_to_a_conversation_id_with_a_nul_is_404(client, key, settings):
    url = "/v1/conversations/c%00/messages"
    assert_problem(client.post(url, json={"content": "hi"}, headers=key), 404)
    assert stored_jobs(settings) == 0


def test_a_batch_naming_an_input_file_id_with_a_nul_is_422_and_stores_nothing(
    client, key, settings
):
    body = {"input_file_id": f"file-{NUL}", "endpoint": CHAT, "completion_window": "24h"}
    problem = assert_problem(client.post("/v1/batches", json=body, headers=key), 422)
    assert "input_file_id" in str(problem)
    assert counts(settings.database_url) == (0, 0)


def test_an_answer_holding_a_nul_is_stored_with_a_replacement_mark(client, key, settings):
    # Given a job whose model answer holds a NUL (the fake provider echoes the prompt)
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": f"a{NUL}b"}, headers=key).json()
    # When a worker runs it, the job ends (it was stuck running on PostgreSQL: the end failed)
    assert run_all(settings, [job["id"]]) == ["succeeded"]
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["status"] == "succeeded" and shown["attempts"] == 1
    assert shown["output"]["text"] == "reply to a\ufffdb"


def test_a_provider_error_quoting_a_nul_fails_the_job_with_a_replacement_mark(
    client, key, settings
):
    # Given a provider that refuses the request, quoting its NUL back in the message
    refusal = PermanentProviderError(f"Invalid value: 'a{NUL}b'", status_code=400)
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": f"a{NUL}b"}, headers=key).json()
    # When a worker runs it, the job fails with the message (not stuck running on PostgreSQL)
    assert run_all(settings, [job["id"]], FakeProvider(outcomes=[refusal])) == ["failed"]
    shown = client.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert shown["status"] == "failed" and "a\ufffdb" in shown["error"]["message"]
