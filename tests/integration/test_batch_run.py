"""A batch after create, on both databases: finalizing, its files, cancel, expiry, the sweeper."""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, text
from sqlmodel import select

from models.attempts import Attempt, Image
from models.batch_output import finalize_batch
from models.batch_run import cancel_batch, claim_finalizing
from models.batches import Batch, batch_public, get_batch
from models.catalogue import get_catalogue
from models.db import get_engine, session_scope, utcnow
from models.errors import Conflict
from models.files import StoredFile, iter_content
from models.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, claim_job, finish_job
from models.keys import ApiKey, create_key
from models.lifecycle import reclaim_expired
from tests.helpers import FakeProvider, wait_until
from worker.batches import after_batch_job, sweep_batches
from worker.retry import RetryPolicy
from worker.runner import Runner

RESERVED = Decimal("0.01")


@pytest.fixture
def engine(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output files go to ./genq-files (GENQ_FILES_DIR's default)
    return get_engine(database_url)


def make_batch(engine, statuses: list[str], *, expires_in_s: int = 3600) -> tuple[str, str]:
    """A running batch whose line i (1-based) is a job in statuses[i-1]; (batch id, key id)."""
    with session_scope(engine) as session:
        key, _ = create_key(session, name="batcher", budget_usd=Decimal(10))
        key.reserved_usd = RESERVED * sum(s in (QUEUED, RUNNING) for s in statuses)
        batch = Batch(
            key_id=key.id,
            status="in_progress",
            endpoint="/v1/chat/completions",
            input_file_id="file-input",
            total=len(statuses),
            expires_at=utcnow() + timedelta(seconds=expires_in_s),
            in_progress_at=utcnow(),
        )
        session.add_all([key, batch])
        session.flush()
        for line, status in enumerate(statuses, 1):
            session.add(job_of(batch, line, status))
        return batch.id, key.id


def job_of(batch: Batch, line: int, status: str) -> Job:
    job = Job(
        id=f"{batch.id[-8:]}{line:024d}",
        key_id=batch.key_id,
        kind="text",
        model="gpt-4o-mini",
        request={"kind": "text", "prompt": f"line {line}"},
        status=status,
        batch_id=batch.id,
        custom_id=f"req-{line}",
        batch_line=line,
        reserved_usd=RESERVED,
    )
    if status == SUCCEEDED:
        job.output_text, job.finish_reason = f"answer {line}", "stop"
        job.prompt_tokens, job.completion_tokens, job.reserved_usd = 5, 7, Decimal(0)
    elif status == FAILED:
        job.error_type, job.error_message, job.reserved_usd = "provider_error", "boom", Decimal(0)
    return job


def end_job(engine, batch_id: str, line: int, status: str) -> None:
    with session_scope(engine) as session:
        job = session.get(Job, f"{batch_id[-8:]}{line:024d}")
        if status == SUCCEEDED:
            job.output_text, job.finish_reason = f"answer {line}", "stop"
        finish_job(session, job=job, status=status, error_type=None if status == SUCCEEDED else "x")


def file_lines(engine, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    with session_scope(engine) as session:
        stored = session.get(StoredFile, file_id)
        assert stored.purpose == "batch_output"
        return [json.loads(line) for line in b"".join(iter_content(stored)).splitlines()]


def batch_of(engine, batch_id: str) -> Batch:
    with session_scope(engine) as session:
        return session.get(Batch, batch_id)


def test_finalize_waits_for_the_last_job_then_writes_both_files_in_line_order(engine):
    # Given a batch with a succeeded, a failed (provider said 400), and a still-queued line
    batch_id, _ = make_batch(engine, [SUCCEEDED, FAILED, SUCCEEDED, QUEUED])
    with session_scope(engine) as session:
        session.add(
            Attempt(
                job_id=f"{batch_id[-8:]}{2:024d}",
                number=1,
                model="gpt-4o-mini",
                provider="offline",
                outcome="failed",
                http_status=400,
            )
        )
    # When a worker ends a job while another is queued, nothing is finalized
    queued: list[tuple[str, str]] = []
    assert not after_batch_job(
        engine, batch_id=batch_id, kind="text", enqueue=lambda *a: queued.append(a)
    )
    assert finalize_batch(engine, batch_id=batch_id) is None
    # When the last job ends, the worker queues the finalize, and it completes the batch
    end_job(engine, batch_id, 4, FAILED)
    assert after_batch_job(
        engine, batch_id=batch_id, kind="text", enqueue=lambda *a: queued.append(a)
    )
    assert queued == [(batch_id, "text")]
    assert finalize_batch(engine, batch_id=batch_id) == "completed"
    assert finalize_batch(engine, batch_id=batch_id) is None  # once
    batch = batch_of(engine, batch_id)
    assert batch.status == "completed" and batch.completed_at and batch.finalizing_at
    # Then the output file answers the succeeded lines, in order, as ChatCompletions
    output = file_lines(engine, batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["req-1", "req-3"]
    first = output[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "answer 1",
        "refusal": None,
    }
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert first["id"] == f"batch_req_{first['response']['request_id']}"
    # And the error file the failed ones, with the provider's status when there was one
    errors = file_lines(engine, batch.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [
        ("req-2", 400),
        ("req-4", 500),
    ]
    assert errors[0]["response"]["body"]["error"]["message"] == "boom"


def test_only_one_caller_claims_a_done_batch(engine):
    batch_id, _ = make_batch(engine, [SUCCEEDED])
    with session_scope(engine) as session:
        assert claim_finalizing(session, batch_id=batch_id)
    with session_scope(engine) as session:
        assert not claim_finalizing(session, batch_id=batch_id)


def test_cancel_stops_queued_lines_now_and_ends_cancelled_once_none_runs(engine):
    # Given a batch with one line done, one running and two queued (each holding budget)
    batch_id, key_id = make_batch(engine, [SUCCEEDED, RUNNING, QUEUED, QUEUED])
    # When it is cancelled
    with session_scope(engine) as session:
        assert cancel_batch(session, batch_id=batch_id, key_id=key_id).status == "cancelling"
    with session_scope(engine) as session:
        jobs = {j.batch_line: j for j in session.exec(select(Job).where(Job.batch_id == batch_id))}
        key = session.get(ApiKey, key_id)
    # Then its queued jobs are cancelled with their budget released, the running one asked to stop
    assert [jobs[n].status for n in (3, 4)] == [CANCELLED, CANCELLED]
    assert jobs[3].error_type == "batch_cancelled" and jobs[3].reserved_usd == 0
    assert jobs[2].status == RUNNING and jobs[2].cancel_requested
    assert key.reserved_usd == RESERVED  # the running one's only
    # And cancelling again answers the same; it is not finalized while a job runs
    with session_scope(engine) as session:
        assert cancel_batch(session, batch_id=batch_id, key_id=key_id).status == "cancelling"
    assert finalize_batch(engine, batch_id=batch_id) is None
    # When the running job stops, the batch ends cancelled with the done line in its output
    end_job(engine, batch_id, 2, CANCELLED)
    assert finalize_batch(engine, batch_id=batch_id) == "cancelled"
    batch = batch_of(engine, batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert [line["custom_id"] for line in file_lines(engine, batch.output_file_id)] == ["req-1"]
    errors = file_lines(engine, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("req-2", "batch_cancelled", None),
        ("req-3", "batch_cancelled", None),
        ("req-4", "batch_cancelled", None),
    ]
    with session_scope(engine) as session, pytest.raises(Conflict):
        cancel_batch(session, batch_id=batch_id, key_id=key_id)


def test_the_sweeper_expires_a_batch_past_its_window(engine):
    # Given a batch past its completion window with one line done and two not started
    batch_id, key_id = make_batch(engine, [SUCCEEDED, QUEUED, QUEUED], expires_in_s=-1)
    # When the sweeper runs
    assert sweep_batches(engine) == {"expired": 1, "stopped": 0, "finalized": 1}
    # Then the batch is expired, the unfinished lines in its error file as batch_expired
    batch = batch_of(engine, batch_id)
    assert batch.status == "expired" and batch.expired_at
    assert [line["custom_id"] for line in file_lines(engine, batch.output_file_id)] == ["req-1"]
    errors = file_lines(engine, batch.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("req-2", "batch_expired"),
        ("req-3", "batch_expired"),
    ]
    with session_scope(engine) as session:
        assert session.get(ApiKey, key_id).reserved_usd == 0
    assert sweep_batches(engine) == {"expired": 0, "stopped": 0, "finalized": 0}


@pytest.mark.parametrize("stop", ["cancel", "expiry"])
def test_a_stopped_batch_counts_only_the_lines_that_ran_as_completed_or_failed(engine, stop):
    # Given a batch with a succeeded, a failed and two queued lines, stopped by a cancel or
    # by its completion window
    batch_id, key_id = make_batch(
        engine, [SUCCEEDED, FAILED, QUEUED, QUEUED], expires_in_s=-1 if stop == "expiry" else 3600
    )
    if stop == "cancel":
        with session_scope(engine) as session:
            cancel_batch(session, batch_id=batch_id, key_id=key_id)
    sweep_batches(engine)
    with session_scope(engine) as session:
        batch = get_batch(session, batch_id=batch_id, key_id=key_id)
        public = batch_public(session, batch)
    # Then the lines that never ran are in neither count (as OpenAI reports a cancelling batch:
    # completed + failed < total), though the error file holds them
    assert public.status == ("cancelled" if stop == "cancel" else "expired")
    assert public.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 1}
    assert len(file_lines(engine, public.error_file_id)) == 3


def test_the_sweeper_finalizes_a_done_batch_and_rebuilds_one_whose_builder_died(engine):
    # Given a done batch nobody finalized (its last worker died), and one stuck in finalizing
    done_id, _ = make_batch(engine, [SUCCEEDED, FAILED])
    stuck_id, _ = make_batch(engine, [SUCCEEDED])
    with session_scope(engine) as session:
        stuck = session.get(Batch, stuck_id)
        stuck.status, stuck.finalizing_at = "finalizing", utcnow() - timedelta(hours=1)
    # When the sweeper runs, Then both are completed with their files
    assert sweep_batches(engine)["finalized"] == 2
    for batch_id in (done_id, stuck_id):
        batch = batch_of(engine, batch_id)
        assert batch.status == "completed" and file_lines(engine, batch.output_file_id)
    assert batch_of(engine, stuck_id).error_file_id is None  # no failed line: no error file


def run_counting(engine, job_id: str, ended: list) -> list[str]:
    """Run the job with the worker's Runner (a fake provider); the SQL statements it ran."""
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    def batch_job_ended(batch_id: str, kind: str) -> None:
        ended.append(batch_id)
        after_batch_job(engine, batch_id=batch_id, kind=kind, enqueue=lambda *a: ended.append(a))

    runner = Runner(
        engine=engine,
        provider=FakeProvider(),
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_s=0.02),
        batch_job_ended=batch_job_ended,
    )
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert runner.run(job_id, worker="w1") == "succeeded"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return statements


def test_a_plain_job_does_no_batch_work_and_a_batch_jobs_end_queues_the_finalize(
    engine, tiktoken_dir
):
    # Given a plain job and the last queued job of a batch
    batch_id, _ = make_batch(engine, [SUCCEEDED, QUEUED])
    with session_scope(engine) as session:
        plain = job_of(session.get(Batch, batch_id), 9, QUEUED)
        plain.id, plain.batch_id, plain.custom_id, plain.batch_line = "p" * 32, None, None, None
        session.add(plain)
    # When the worker's Runner runs each
    ended: list = []
    plain_statements = run_counting(engine, "p" * 32, ended)
    # Then the plain job runs no batch statement and never calls the batch hook
    assert ended == [] and not [s for s in plain_statements if "batch" in s.split("RETURNING")[0]]
    batch_statements = run_counting(engine, f"{batch_id[-8:]}{2:024d}", ended)
    # And the batch's last job costs one statement more (the unfinished check), then queues it
    assert len(batch_statements) == len(plain_statements) + 1
    assert ended == [batch_id, (batch_id, "text")]
    assert finalize_batch(engine, batch_id=batch_id) == "completed"


def test_an_image_lines_output_is_an_images_response_by_url_or_in_base64(engine):
    # Given an image batch: one line asked for URLs, one for b64_json
    batch_id, _ = make_batch(engine, [SUCCEEDED, SUCCEEDED])
    with session_scope(engine) as session:
        for line, answer in ((1, None), (2, "b64_json")):
            job = session.get(Job, f"{batch_id[-8:]}{line:024d}")
            job.kind, job.model, job.output_text, job.image_count = "image", "dall-e-2", None, 1
            job.meta = {"openai_response_format": answer} if answer else {}
            session.add(Image(job_id=job.id, index=0, data=b"\x89PNG-bytes"))
    # When it is finalized
    assert finalize_batch(engine, batch_id=batch_id) == "completed"
    by_url, inline = file_lines(engine, batch_of(engine, batch_id).output_file_id)
    # Then each body is an ImagesResponse, as the line asked
    assert by_url["response"]["body"]["data"] == [
        {"url": f"/v1/jobs/{by_url['response']['request_id']}/images/0"}
    ]
    assert inline["response"]["body"]["data"] == [
        {"b64_json": base64.b64encode(b"\x89PNG-bytes").decode()}
    ]
    assert set(inline["response"]["body"]) == {"created", "data", "usage"}


#: (error type a failed line ended with, the status its error line shows without a provider's)
STATUS_BY_TYPE = [
    ("moderation_blocked", 400),
    ("moderation_unavailable", 503),
    ("invalid_output", 422),
    ("timeout", 408),
    ("unknown_model", 400),
    ("rate_limited", 429),
    ("insufficient_quota", 429),
    ("provider_error", 502),
    ("connection_error", 502),
    ("stream_broken", 502),
    ("image_download_failed", 502),
    ("invalid_image", 502),
    ("internal_error", 500),
]


def test_each_error_type_shows_its_status_in_the_error_file(engine):
    # Given a batch whose lines failed for every kind of reason, no provider status stored
    batch_id, _ = make_batch(engine, [FAILED] * len(STATUS_BY_TYPE))
    with session_scope(engine) as session:
        for line, (error_type, _) in enumerate(STATUS_BY_TYPE, 1):
            session.get(Job, f"{batch_id[-8:]}{line:024d}").error_type = error_type
    # When it is finalized
    assert finalize_batch(engine, batch_id=batch_id) == "completed"
    # Then each line's status code says what kind of failure it was (a block is not a 500)
    errors = file_lines(engine, batch_of(engine, batch_id).error_file_id)
    shown = [(e["response"]["body"]["error"]["code"], e["response"]["status_code"]) for e in errors]
    assert shown == STATUS_BY_TYPE


def test_a_queued_line_with_billed_attempts_is_charged_them_when_the_batch_is_cancelled(engine):
    # Given a batch line given back to the queue after a billed attempt
    batch_id, key_id = make_batch(engine, [QUEUED])
    with session_scope(engine) as session:
        job = session.exec(select(Job).where(Job.batch_id == batch_id)).one()
        job.cost_usd, job.attempts = Decimal("0.003"), 1
        session.add(job)
    # When the batch is cancelled
    with session_scope(engine) as session:
        cancel_batch(session, batch_id=batch_id, key_id=key_id)
    # Then the key holds nothing for it and is charged what the line already cost
    with session_scope(engine) as session:
        key = session.get(ApiKey, key_id)
    assert key.reserved_usd == 0 and key.spent_usd == Decimal("0.003")


def test_a_running_line_of_a_cancelled_batch_that_is_reclaimed_ends_without_a_call(engine):
    # Given a batch whose running line's worker died after the batch was cancelled
    batch_id, key_id = make_batch(engine, [QUEUED])
    job_id = f"{batch_id[-8:]}{1:024d}"
    with session_scope(engine) as session:
        assert claim_job(session, job_id=job_id, worker="dead", lease_s=60)
    with session_scope(engine) as session:
        cancel_batch(session, batch_id=batch_id, key_id=key_id)
    with session_scope(engine) as session:
        assert reclaim_expired(session, now=utcnow() + timedelta(seconds=120))
    # When the line is delivered again
    ended, provider = [], FakeProvider()
    runner = Runner(
        engine=engine,
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1),
        batch_job_ended=lambda batch, kind: ended.append(batch),
    )
    assert runner.run(job_id) == "cancelled"
    # Then it ends cancelled without a call, its budget released, and the batch is told
    with session_scope(engine) as session:
        job, key = session.get(Job, job_id), session.get(ApiKey, key_id)
    assert provider.calls == 0 and job.status == CANCELLED and job.reserved_usd == 0
    assert key.reserved_usd == 0 and ended == [batch_id]
    assert finalize_batch(engine, batch_id=batch_id) == "cancelled"


@pytest.fixture
def postgres_engine(tmp_path, monkeypatch):
    """Row locks are PostgreSQL's (SQLite locks the whole database: no lock order to get wrong)."""
    from models.migrate import upgrade
    from tests.conftest import _postgres_database

    monkeypatch.chdir(tmp_path)
    database = _postgres_database()
    url = next(database)
    upgrade(url)
    yield get_engine(url)
    database.close()


def lock_waits(engine) -> int:
    """Sessions waiting for a lock now (pg_stat_activity is a snapshot per transaction: each look
    is its own)."""
    with engine.connect() as watch:
        return watch.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()


def test_a_batch_cancel_never_deadlocks_with_a_worker_finishing_one_of_its_lines(postgres_engine):
    # Given a batch with a queued and a running line, and a worker in the middle of finishing the
    # running one: it holds that job's row and will take the key's budget row next (as every end)
    engine = postgres_engine
    batch_id, key_id = make_batch(engine, [QUEUED, RUNNING])
    running_id = job_of(batch_of(engine, batch_id), 2, RUNNING).id
    worker = engine.connect()
    worker.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = :id"), {"id": running_id})
    outcome: list = []

    def cancel() -> None:
        try:
            with session_scope(engine) as session:
                outcome.append(cancel_batch(session, batch_id=batch_id, key_id=key_id).status)
        except Exception as exc:  # the assertion below names it
            outcome.append(exc)

    # When the batch is cancelled meanwhile (it waits for the running line's row)
    canceller = threading.Thread(target=cancel)
    canceller.start()
    wait_until(lambda: lock_waits(engine), what="the cancel to wait for the running line's row")
    # and the worker then settles the key's budget and commits
    worker.execute(text("UPDATE api_keys SET spent_usd = spent_usd WHERE id = :id"), {"id": key_id})
    worker.commit()
    worker.close()
    canceller.join(timeout=30)
    # Then neither was chosen as a deadlock's victim: the cancel went through
    assert outcome == ["cancelling"], outcome
