"""`POST /v1/batches` validation, OpenAI's three levels: bad parameters are a 4xx and store
nothing; a bad file or bad lines store the batch `failed` with `errors` and no job."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from models.db import get_engine, session_scope
from models.files import store_output_file
from models.keys import create_key
from tests.helpers import auth, new_key
from tests.integration.batches_helpers import IMAGES, chat_line, counts, create, jsonl, upload

GOOD = chat_line("ok")
LONG = "x" * 20_000  # over the test settings' 16 KiB body limit

#: (lines, endpoint, code, 1-based line, param)
BAD_FILES = [
    ([GOOD, "not json"], None, "invalid_json_line", 2, None),
    (["[1, 2]"], None, "invalid_json_line", 1, None),
    ([{k: v for k, v in GOOD.items() if k != "custom_id"}], None,
     "missing_required_parameter", 1, "custom_id"),
    ([{k: v for k, v in GOOD.items() if k != "method"}], None,
     "missing_required_parameter", 1, "method"),
    ([{k: v for k, v in GOOD.items() if k != "url"}], None,
     "missing_required_parameter", 1, "url"),
    ([{k: v for k, v in GOOD.items() if k != "body"}], None,
     "missing_required_parameter", 1, "body"),
    ([{**GOOD, "extra": 1}], None, "unknown_parameter", 1, "extra"),
    ([{**GOOD, "custom_id": 7}], None, "invalid_type", 1, "custom_id"),
    ([{**GOOD, "custom_id": "c" * 513}], None, "string_above_max_length", 1, "custom_id"),
    ([GOOD, chat_line("two"), chat_line("ok")], None, "duplicate_custom_id", 3, "custom_id"),
    ([{**GOOD, "method": "GET"}], None, "invalid_method", 1, "method"),
    ([{**GOOD, "url": "/v1/embeddings"}], None, "invalid_url", 1, "url"),
    ([{**GOOD, "url": IMAGES}], None, "invalid_url", 1, "url"),
    ([{**GOOD, "body": "hi"}], None, "invalid_type", 1, "body"),
    ([{**GOOD, "body": {"model": "economy"}}], None,
     "missing_required_parameter", 1, "body.messages"),
    ([{**GOOD, "body": {"messages": [{"role": "robot", "content": "x"}]}}], None,
     "invalid_request", 1, "body.messages.0.role"),
    ([chat_line("a", model="gpt-nope")], None, "invalid_request", 1, "body.model"),
    ([chat_line("a", temperature=9)], None, "invalid_request", 1, "body.temperature"),
    ([chat_line("a", model="gpt-4.1-nano", max_tokens=10**7)], None,
     "invalid_request", 1, "body.max_tokens"),
    ([chat_line("a", n=2)], None, "invalid_value", 1, "body.n"),
    ([chat_line("a", stream=True)], None, "invalid_value", 1, "body.stream"),
    ([chat_line("a", content=LONG)], None, "line_too_large", 1, None),
    ([], None, "empty_file", None, None),
    ([{"custom_id": "i", "method": "POST", "url": IMAGES, "body": {"model": "dall-e-3"}}],
     IMAGES, "missing_required_parameter", 1, "body.prompt"),
    ([{"custom_id": "i", "method": "POST", "url": IMAGES,
       "body": {"prompt": "fox", "model": "dall-e-3", "size": "3x3"}}],
     IMAGES, "invalid_request", 1, "body.size"),
    ([{"custom_id": "i", "method": "POST", "url": IMAGES,
       "body": {"prompt": "fox", "response_format": "gif"}}],
     IMAGES, "invalid_value", 1, "body.response_format"),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "endpoint", "code", "line", "param"), BAD_FILES)
def test_a_bad_line_fails_the_batch_with_its_code_and_creates_no_job(
    client, key, settings, lines, endpoint, code, line, param
):
    # Given a file with a bad line among good ones
    file_id = upload(client, key, jsonl(*lines) if lines else b"\n\n")
    # When a batch is created from it
    answer = create(client, key, file_id, **({"endpoint": endpoint} if endpoint else {}))
    # Then the batch exists, failed, naming the line; no job was created
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert (
        batch["status"] == "failed" and batch["failed_at"] and batch["errors"]["object"] == "list"
    )
    first = batch["errors"]["data"][0]
    assert (first["code"], first["line"], first["param"]) == (code, line, param), first
    assert first["message"]
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert counts(settings.database_url) == (1, 0)
    assert client.get(f"/v1/batches/{batch['id']}", headers=key).json()["status"] == "failed"


def test_every_bad_line_is_reported_and_good_lines_before_it_roll_back(client, key, settings):
    # Given more than a chunk of good lines, then two bad ones
    good = [chat_line(f"g{i}") for i in range(1_200)]
    file_id = upload(client, key, jsonl(*good, "nope", chat_line("g3")))
    batch = create(client, key, file_id).json()
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [
        ("invalid_json_line", 1_201),
        ("duplicate_custom_id", 1_202),
    ]
    assert counts(settings.database_url) == (1, 0)


def test_more_lines_than_allowed_fail_the_batch(settings, tmp_path):
    limited = settings.model_copy(update={"batch_max_lines": 2})
    with TestClient(create_app(limited)) as client:
        key = auth(new_key(settings.database_url))
        file_id = upload(client, key, jsonl(chat_line("a"), chat_line("b"), chat_line("c")))
        batch = create(client, key, file_id).json()
    assert batch["status"] == "failed"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("too_many_lines", 3)]
    assert counts(settings.database_url) == (1, 0)


BAD_PARAMETERS = [
    ({"endpoint": "/v1/embeddings"}, 422),
    ({"endpoint": "/v1/responses"}, 422),
    ({"completion_window": "48h"}, 422),
    ({"input_file_id": "file-nope"}, 404),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, 422),
    ({"metadata": {"k": "v" * 513}}, 422),
    ({"metadata": {"k": 1}}, 422),
    ({"unknown": True}, 422),
]


@pytest.mark.parametrize(("change", "status"), BAD_PARAMETERS)
def test_bad_parameters_are_refused_and_store_no_batch(client, key, settings, change, status):
    file_id = upload(client, key, jsonl(GOOD))
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    answer = client.post(
        "/v1/batches", headers=key, json={**body, "completion_window": "24h", **change}
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert counts(settings.database_url) == (0, 0)


def test_a_batch_reads_only_batch_input_files(client, settings):
    # Given an output file of a key (genq writes those; clients cannot upload one)
    with session_scope(get_engine(settings.database_url)) as session:
        owner, secret = create_key(session, name="outputs")
        stored = store_output_file(
            session,
            key_id=owner.id,
            filename="out.jsonl",
            purpose="batch_output",
            lines=[b"{}"],
            directory=settings.files_dir,
        )
    answer = create(client, auth(secret), stored.id)
    assert answer.status_code == 422 and "batch" in answer.json()["detail"]
    assert counts(settings.database_url) == (0, 0)


def test_a_line_nested_deeper_than_the_parser_goes_is_an_invalid_json_line(client, key, settings):
    # Given a line of 8,000 nested arrays: under the line size limit, deeper than json's stack
    deep = "[" * 8_000 + "]" * 8_000
    file_id = upload(client, key, jsonl(GOOD, deep))
    # When a batch is created from it, it fails naming the line (never a 500), storing no job
    answer = create(client, key, file_id)
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert batch["status"] == "failed"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("invalid_json_line", 2)]
    assert counts(settings.database_url) == (1, 0)
