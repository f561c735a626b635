"""OpenAI-compatible batches end to end: the official `openai` SDK as the client, a real
`genq api`, real `genq worker` processes, Redis and PostgreSQL (the offline simulator answers).

One stack serves the module (API + two workers); each test makes its own key and batches.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from models.db import get_engine, session_scope
from models.migrate import upgrade
from models.settings import Settings
from tests.conftest import _postgres_database
from tests.e2e.conftest import Stack
from tests.helpers import genq, new_key, wait_until

pytestmark = pytest.mark.e2e
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def shared(redis_url, tiktoken_dir, tmp_path_factory) -> Iterator[tuple[Stack, Settings]]:
    """API + two workers on a fresh PostgreSQL database, a fast sweeper and short leases."""
    database = _postgres_database()
    url = next(database)
    upgrade(url)
    settings = Settings(
        _env_file=None, database_url=url, redis_url=redis_url, tiktoken_cache_dir=tiktoken_dir
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GENQ_", "OPENAI_"))},
        "GENQ_DATABASE_URL": url,
        "GENQ_REDIS_URL": redis_url,
        "GENQ_TIKTOKEN_CACHE_DIR": str(tiktoken_dir),
        "GENQ_PROVIDER": "offline",
        "GENQ_OFFLINE_LATENCY_MS": "20",
        "GENQ_SWEEP_INTERVAL_S": "0.5",
        "GENQ_LEASE_S": "3",
    }
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("batches"))
    stack.api_url = stack.api()
    stack.worker("w1", wait=False)
    stack.worker("w2", wait=False)
    stack.ready("w1"), stack.ready("w2")
    yield stack, settings
    stack.stop()
    next(database, None)


@pytest.fixture
def sdk(shared) -> tuple[openai.OpenAI, str, Stack, Settings]:
    stack, settings = shared
    secret = new_key(settings.database_url)
    client = openai.OpenAI(api_key=secret, base_url=f"{stack.api_url}/v1", max_retries=0)
    return client, secret, stack, settings


def chat_lines(count: int, prefix: str = "req") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini" if i % 2 else "economy",
                    "messages": [{"role": "user", "content": f"Say {i}"}],
                    "max_tokens": 8,
                },
            }
        ).encode()
        + b"\n"
        for i in range(count)
    )


def start_batch(client: openai.OpenAI, lines: bytes, **extra):
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )


def until_ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 120):
    def ended():
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    return wait_until(ended, timeout_s=timeout_s, what=f"batch {batch_id} to end")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def answered_once(client, batch, total: int, prefix: str = "req") -> tuple[list, list]:
    """The output and error lines; every custom_id of the input in exactly one of them."""
    output = lines_of(client, batch.output_file_id)
    errors = lines_of(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in output + errors)
    assert seen == Counter(f"{prefix}-{i}" for i in range(total)), seen.most_common(3)
    return output, errors


def test_the_openai_sdk_runs_a_batch_and_reads_its_output_by_custom_id(sdk):
    client, secret, stack, _ = sdk
    # Given a file of 30 chat requests, some naming a tier instead of a model
    batch = start_batch(client, chat_lines(30), metadata={"run": "nightly"})
    assert batch.id.startswith("batch_") and batch.status in ("in_progress", "validating")
    assert batch.request_counts.total == 30
    # When it runs, Then it completes with every line answered, as ChatCompletions
    done = until_ended(client, batch.id)
    assert done.status == "completed" and done.metadata == {"run": "nightly"}
    assert done.request_counts.completed == 30 and done.request_counts.failed == 0
    assert done.completed_at and done.finalizing_at and done.error_file_id is None
    output, _ = answered_once(client, done, 30)
    by_id = {line["custom_id"]: line for line in output}
    for i in range(30):
        line = by_id[f"req-{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content.startswith("[synthetic]")
        assert completion.usage.completion_tokens <= 8
        job = client.get(f"/jobs/{line['response']['request_id']}", cast_to=object)
        assert job["custom_id"] == f"req-{i}" and job["batch_id"] == batch.id
        if i % 2:
            assert completion.model == "gpt-4o-mini"
    # And the listing shows it, usage and cost summed from its jobs
    assert batch.id in [b.id for b in client.batches.list(limit=5).data]
    shown = client.batches.retrieve(batch.id).model_dump()
    assert shown["usage"]["total_tokens"] > 0 and shown["cost_usd"] > 0
    assert secret not in stack.all_logs()


def test_cancel_mid_run_keeps_finished_lines_and_cancels_the_rest(sdk):
    client, _, _, settings = sdk
    batch = start_batch(client, chat_lines(400))
    wait_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5,
        what="some lines to finish",
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = until_ended(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    output, errors = answered_once(client, done, 400)
    assert output and errors  # some lines ran, the queued ones never did
    assert all(line["error"]["code"] == "batch_cancelled" for line in errors)
    with session_scope(get_engine(settings.database_url)) as session:
        reserved = session.execute(
            text("SELECT sum(reserved_usd) FROM jobs WHERE batch_id = :b"), {"b": batch.id}
        ).scalar()
    assert reserved == 0  # every cancelled line's budget was released
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_a_batch_past_its_window_expires_with_its_unfinished_lines_in_the_error_file(sdk):
    client, _, _, settings = sdk
    batch = start_batch(client, chat_lines(400))
    wait_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5,
        what="some lines to finish",
    )
    with session_scope(get_engine(settings.database_url)) as session:  # its 24 h pass
        session.execute(
            text("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = :b"),
            {"b": batch.id},
        )
    done = until_ended(client, batch.id)
    assert done.status == "expired" and done.expired_at
    output, errors = answered_once(client, done, 400)
    assert output and errors
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_a_worker_killed_mid_batch_leaves_every_line_answered_exactly_once(sdk):
    client, _, stack, settings = sdk
    stack.worker("victim", "--concurrency", "8", env={"GENQ_OFFLINE_LATENCY_MS": "300"})
    batch = start_batch(client, chat_lines(120, "k"))

    def victim_running() -> bool:
        with session_scope(get_engine(settings.database_url)) as session:
            return bool(
                session.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE batch_id = :b AND status = 'running' "
                        "AND worker LIKE 'victim@%'"
                    ),
                    {"b": batch.id},
                ).scalar()
            )

    wait_until(victim_running, what="the victim worker to run lines")
    stack.procs["victim"].send_signal(signal.SIGKILL)
    stack.procs["victim"].wait()
    done = until_ended(client, batch.id, timeout_s=180)
    assert done.status == "completed"
    output, errors = answered_once(client, done, 120, "k")
    assert len(output) == 120 and not errors  # the killed lines were run again, once each


def test_the_cli_creates_watches_and_fetches_results(sdk, tmp_path):
    _, secret, stack, _ = sdk
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat_lines(12))
    env = {**stack.env, "GENQ_API_URL": stack.api_url, "GENQ_API_KEY": secret}
    created = genq("batch", "create", str(source), "--watch", "--json", env=env)
    assert created.returncode == 0, created.stderr
    batch = json.loads(created.stdout)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 12
    assert "12/12" in created.stderr  # the progress bar
    target = tmp_path / "out.jsonl"
    fetched = genq("batch", "results", batch["id"], "-o", str(target), env=env)
    assert fetched.returncode == 0, fetched.stderr
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(12))
    listed = genq("batch", "list", env=env)
    assert listed.returncode == 0 and batch["id"] in listed.stdout
    shown = genq("batch", "status", batch["id"], "--json", env=env)
    assert json.loads(shown.stdout)["output_file_id"] == batch["output_file_id"]
    refused = genq("batch", "cancel", batch["id"], env=env)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "409" in refused.stderr and not refused.stdout
    missing = genq("batch", "status", "batch_nope", env=env)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_the_readme_sdk_example_runs(sdk, tmp_path):
    _, secret, stack, _ = sdk
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("<!-- batches-sdk-example -->", 1)[1]
    code = example.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**stack.env, "OPENAI_BASE_URL": f"{stack.api_url}/v1", "OPENAI_API_KEY": secret}
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    printed = ran.stdout.splitlines()
    assert printed[0] == "completed BatchRequestCounts(completed=3, failed=0, total=3)"
    assert sorted(line.split()[0] for line in printed[1:]) == ["greet-0", "greet-1", "greet-2"]
    assert all("[synthetic]" in line for line in printed[1:])
