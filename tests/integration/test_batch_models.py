"""Files and batches tables on both databases: ownership, listing, output files, live tallies."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.batches import Batch, batch_public, get_batch, list_batches
from models.db import get_engine, session_scope
from models.errors import BatchNotFound, FileNotFound
from models.files import (
    delete_file,
    get_file,
    iter_content,
    list_files,
    remove_content,
    store_output_file,
)
from models.jobs import Job
from models.keys import create_key


@pytest.fixture
def engine(database_url):
    return get_engine(database_url)


def _keys(engine) -> tuple[str, str]:
    with session_scope(engine) as session:
        mine, _ = create_key(session, name="mine")
        other, _ = create_key(session, name="other")
        return mine.id, other.id


def test_an_output_file_round_trips_and_is_invisible_to_another_key(engine, tmp_path):
    mine, other = _keys(engine)
    lines = [b'{"custom_id": "a"}', b'{"custom_id": "b"}\n']
    with session_scope(engine) as session:
        stored = store_output_file(
            session,
            key_id=mine,
            filename="out.jsonl",
            purpose="batch_output",
            lines=iter(lines),
            directory=tmp_path / "files",
        )
    assert stored.id.startswith("file-") and len(stored.id) == 5 + 24
    with session_scope(engine) as session:
        found = get_file(session, file_id=stored.id, key_id=mine)
        assert b"".join(iter_content(found)) == b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
        assert found.bytes == 38
        assert [f.id for f in list_files(session, key_id=mine)[0]] == [stored.id]
        assert list_files(session, key_id=other) == ([], False)
        with pytest.raises(FileNotFound):
            get_file(session, file_id=stored.id, key_id=other)
        with pytest.raises(FileNotFound):
            delete_file(session, file_id=stored.id, key_id=other)
        remove_content(delete_file(session, file_id=stored.id, key_id=mine))
    with session_scope(engine) as session, pytest.raises(FileNotFound):
        get_file(session, file_id=stored.id, key_id=mine)
    assert list((tmp_path / "files").iterdir()) == []


def _job(key_id: str, batch_id: str | None, status: str, line: int, cost: str) -> Job:
    return Job(
        key_id=key_id,
        kind="text",
        model="gpt-4o-mini",
        request={"kind": "text", "prompt": "x"},
        status=status,
        batch_id=batch_id,
        custom_id=f"r{line}" if batch_id else None,
        batch_line=line if batch_id else None,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=Decimal(cost),
    )


def test_a_batch_counts_its_own_jobs_only(engine):
    mine, other = _keys(engine)
    with session_scope(engine) as session:
        batch = Batch(key_id=mine, endpoint="/v1/chat/completions", input_file_id="file-x", total=4)
        session.add(batch)
        session.flush()
        statuses = ["succeeded", "succeeded", "failed", "queued"]
        jobs = [_job(mine, batch.id, s, i + 1, "0.0000001") for i, s in enumerate(statuses)]
        session.add_all([*jobs, _job(mine, None, "succeeded", 0, "1")])
    with session_scope(engine) as session:
        public = batch_public(session, get_batch(session, batch_id=batch.id, key_id=mine))
        with pytest.raises(BatchNotFound):
            get_batch(session, batch_id=batch.id, key_id=other)
        assert list_batches(session, key_id=other, limit=10, after=None) == ([], False)
        assert [b.id for b in list_batches(session, key_id=mine, limit=10, after=None)[0]] == [
            batch.id
        ]
    assert public.id.startswith("batch_") and len(public.id) == 6 + 32
    assert public.status == "validating" and public.object == "batch"
    assert public.request_counts.model_dump() == {"total": 4, "completed": 2, "failed": 1}
    assert (public.usage.input_tokens, public.usage.output_tokens) == (40, 20)
    assert public.usage.total_tokens == 60
    assert public.cost_usd == Decimal("0.0000004")
