"""Files and batch creation through the official `openai` SDK against a real `genq api`
process; large uploads and a 50,000-line batch with the API's peak RSS measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from models.migrate import upgrade
from models.queue import BATCH_QUEUE_BY_KIND
from tests.helpers import free_port, new_key, wait_until

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


@dataclass(frozen=True)
class Api:
    url: str
    pid: int
    secret: str
    database_url: str
    workdir: Path

    def client(self, secret: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=secret or self.secret, base_url=f"{self.url}/v1", max_retries=0, timeout=600
        )


def memory_mib(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (the most it has been since the process started)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


@pytest.fixture(scope="module")
def api(tmp_path_factory, redis_url, tiktoken_dir) -> Iterator[Api]:
    """`genq api` (one process) with its own SQLite database and files directory."""
    workdir = tmp_path_factory.mktemp("batch-intake")
    database_url = f"sqlite:///{workdir / 'genq.db'}"
    upgrade(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": database_url,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
        "GENQ_PROVIDER": "offline",
        "GENQ_FILES_DIR": str(workdir / "files"),
        "GENQ_LOG_LEVEL": "WARNING",
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
        yield Api(url, proc.pid, new_key(database_url), database_url, workdir)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _ready(url: str, proc: subprocess.Popen, workdir: Path) -> bool:
    assert proc.poll() is None, (workdir / "api.log").read_text()
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def write_lines(path: Path, lines: int, *, pad: int = 0) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            content = f"Write a tagline for product {i}." + " please" * pad
            body = {"model": "economy", "messages": [{"role": "user", "content": content}]}
            line = {"custom_id": f"p-{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": {**body, "max_tokens": 16}}) + "\n")
    return path


def test_a_file_round_trips_through_the_sdk(api, tmp_path):
    client = api.client()
    path = write_lines(tmp_path / "input.jsonl", 3)
    created = client.files.create(file=path.open("rb"), purpose="batch")
    assert created.id.startswith("file-") and created.purpose == "batch"
    assert created.bytes == path.stat().st_size and created.filename == "input.jsonl"
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.content(created.id).read() == path.read_bytes()
    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_a_batch_is_created_retrieved_and_listed_through_the_sdk(api, tmp_path):
    client = api.client()
    source = client.files.create(
        file=write_lines(tmp_path / "in.jsonl", 4).open("rb"), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=source.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "taglines"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 4
    assert batch.metadata == {"job": "taglines"} and batch.errors is None
    assert client.batches.retrieve(batch.id).id == batch.id
    assert batch.id in [b.id for b in client.batches.list(limit=5)]
    # another key sees neither the batch nor its file
    other = api.client(new_key(api.database_url, "other"))
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(source.id)
    # a bad file: the batch fails with OpenAI's errors object
    bad = client.files.create(file=("bad.jsonl", b"{not json\n"), purpose="batch")
    failed = client.batches.create(
        input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert failed.status == "failed"
    assert [(e.code, e.line) for e in failed.errors.data] == [("invalid_json_line", 1)]
    # a bad parameter: a 4xx the SDK raises
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h"
        )


def test_a_large_upload_streams_to_disk(api, tmp_path):
    # Given a 120 MiB file (not JSON lines: the upload stores bytes, creating a batch reads them)
    path = tmp_path / "large.jsonl"
    with path.open("wb") as out:
        for _ in range(120):
            out.write(b"x" * (MIB - 1) + b"\n")
    before = memory_mib(api.pid, "VmRSS")
    # When it is uploaded
    created = api.client().files.create(file=path.open("rb"), purpose="batch")
    # Then it is stored whole, and the API's peak memory grew by far less than the file
    assert created.bytes == 120 * MIB
    grown = memory_mib(api.pid, "VmHWM") - before
    assert grown < 30, f"the API's peak RSS grew by {grown:.0f} MiB for a 120 MiB upload"
    api.client().files.delete(created.id)


def test_a_50000_line_batch_is_accepted_without_loading_the_file(api, tmp_path, redis_url):
    # Given a 50,000-line file of about 60 MiB
    path = write_lines(tmp_path / "big.jsonl", 50_000, pad=150)
    size_mib = path.stat().st_size / MIB
    client = api.client()
    source = client.files.create(file=path.open("rb"), purpose="batch")
    # (a small batch first: the API's first one loads the token encodings, tens of MiB)
    warm = client.files.create(
        file=write_lines(tmp_path / "warm.jsonl", 5).open("rb"), purpose="batch"
    )
    client.batches.create(
        input_file_id=warm.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    queue = redis.Redis.from_url(redis_url)
    queue.delete(BATCH_QUEUE_BY_KIND["text"])
    before = memory_mib(api.pid, "VmRSS")
    # When a batch is created from it
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Then every line is a queued job, and the API's peak memory grew by less than the file
    assert batch.status == "in_progress" and batch.request_counts.total == 50_000
    assert queue.llen(BATCH_QUEUE_BY_KIND["text"]) == 50_000
    grown = memory_mib(api.pid, "VmHWM") - before
    print(f"50,000 lines, {size_mib:.0f} MiB: API peak RSS +{grown:.0f} MiB")
    assert size_mib > 50 and grown < size_mib / 2, f"peak RSS grew {grown:.0f} MiB"
    queue.delete(BATCH_QUEUE_BY_KIND["text"])


def readme_example(name: str) -> str:
    """The code block after README.md's `<!-- example: NAME … -->` marker."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    after = text.split(f"<!-- example: {name}", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_sdk_example_runs(api, tmp_path):
    # Given the README's example, with the SDK's own variables pointing at genq
    script = tmp_path / "example.py"
    script.write_text(readme_example("batch-sdk"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))}
    env |= {"OPENAI_BASE_URL": f"{api.url}/v1", "OPENAI_API_KEY": api.secret}
    # When it runs
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    # Then it prints the batch in progress with its three requests, and lists it
    assert done.returncode == 0, done.stderr.decode()
    first, counts, listed = done.stdout.decode().splitlines()
    batch_id, status, total = first.split()
    assert batch_id.startswith("batch_") and (status, total) == ("in_progress", "3")
    assert "total=3" in counts and batch_id in listed
