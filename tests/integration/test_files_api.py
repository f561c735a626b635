"""`/v1/files`: uploads written to disk as they stream in, refused uploads leave nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.helpers import auth, new_key
from tests.integration.batches_helpers import upload


def on_disk(settings) -> list[str]:
    directory = settings.files_dir
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_file_round_trips(client, key, settings):
    payload = b'{"a": 1}\n' * 1000
    file_id = upload(client, key, payload, name="../../etc/batch.jsonl")
    shown = client.get(f"/v1/files/{file_id}", headers=key).json()
    assert shown["id"].startswith("file-") and shown["object"] == "file"
    assert (shown["bytes"], shown["purpose"], shown["status"]) == (9000, "batch", "processed")
    assert shown["filename"] == "batch.jsonl"  # no directories from the client's name
    assert on_disk(settings) == [file_id]
    content = client.get(f"/v1/files/{file_id}/content", headers=key)
    assert content.status_code == 200 and content.content == payload
    listed = client.get("/v1/files", headers=key).json()
    assert [f["id"] for f in listed["data"]] == [file_id] and listed["has_more"] is False
    assert client.get("/v1/files?purpose=batch_output", headers=key).json()["data"] == []
    deleted = client.delete(f"/v1/files/{file_id}", headers=key).json()
    assert deleted == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=key).status_code == 404
    assert on_disk(settings) == []


def test_files_list_in_pages_both_ways(client, key):
    ids = [upload(client, key, b"{}\n") for _ in range(3)]
    page = client.get("/v1/files?limit=2", headers=key).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get(f"/v1/files?limit=2&after={page['last_id']}", headers=key).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]]
    oldest = client.get("/v1/files?order=asc&limit=2", headers=key).json()
    assert [f["id"] for f in oldest["data"]] == ids[:2]


def test_another_keys_file_does_not_exist(client, key, settings):
    file_id = upload(client, key, b"{}\n")
    other = auth(new_key(settings.database_url, "other"))
    for method, path in [
        ("get", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("delete", f"/v1/files/{file_id}"),
    ]:
        assert client.request(method, path, headers=other).status_code == 404
    assert client.get("/v1/files", headers=other).json()["data"] == []
    assert on_disk(settings) == [file_id]


@pytest.mark.parametrize(
    ("files", "data", "status"),
    [
        ({"file": ("a.jsonl", b"{}\n")}, {"purpose": "fine-tune"}, 422),
        ({"file": ("a.jsonl", b"{}\n")}, {"purpose": "batch_output"}, 422),
        ({"file": ("a.jsonl", b"{}\n")}, {}, 422),
        ({"other": ("a.jsonl", b"{}\n")}, {"purpose": "batch"}, 422),
    ],
)
def test_a_refused_upload_leaves_nothing(client, key, settings, files, data, status):
    answer = client.post("/v1/files", headers=key, files=files, data=data)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/files", headers=key).json()["data"] == []
    assert on_disk(settings) == []


def test_a_body_that_is_not_multipart_is_refused(client, key, settings):
    answer = client.post("/v1/files", headers=key, json={"purpose": "batch"})
    assert answer.status_code == 422 and "multipart" in answer.json()["detail"]
    assert on_disk(settings) == []


def test_a_broken_multipart_body_is_a_400(client, key, settings):
    headers = {**key, "Content-Type": "multipart/form-data; boundary=XyZ"}
    body = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nab'
    answer = client.post("/v1/files", headers=headers, content=body + b"\r\n--Q")
    assert answer.status_code == 400, answer.text
    assert on_disk(settings) == []


def test_a_file_over_the_limit_is_refused_and_removed(settings):
    small = settings.model_copy(update={"max_file_bytes": 4096})
    with TestClient(create_app(small)) as client:
        key = auth(new_key(settings.database_url))
        answer = client.post(
            "/v1/files",
            headers=key,
            files={"file": ("big.jsonl", b"{}\n" * 2000)},
            data={"purpose": "batch"},
        )
        assert answer.status_code == 413, answer.text
        assert client.get("/v1/files", headers=key).json()["data"] == []
    assert on_disk(settings) == []


def test_uploads_may_exceed_the_json_body_limit(client, key):
    # the test settings cap JSON bodies at 16 KiB; a batch file may be far larger
    file_id = upload(client, key, b'{"custom_id": "x"}\n' * 10_000)
    assert client.get(f"/v1/files/{file_id}", headers=key).json()["bytes"] == 190_000
