"""worker/claims.py: threads that claim while a claim is in progress are claimed together by
one statement; each gets its own row or the statement's error, and nobody waits for nothing.
The statement here is a recording stand-in (the real one runs in
tests/integration/test_claim_many.py on both databases)."""

from __future__ import annotations

import threading
import time
from collections import namedtuple

import pytest

from worker.claims import MAX_GROUP, ClaimGroups

Row = namedtuple("Row", "id claim_token")


class Statement:
    """Records each call's ids; `gate` holds the first call until opened; `fail` raises."""

    def __init__(self, *, hold_first: bool = False, fail_on: int | None = None):
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()
        self.fail_on = fail_on
        self.taken: set[str] = set()

    def __call__(self, engine, *, job_ids, worker, lease_s):
        self.calls.append((worker, list(job_ids)))
        self.entered.set()
        if len(self.calls) == 1:
            assert self.gate.wait(10)
        if self.fail_on == len(self.calls):
            raise RuntimeError("database down")
        rows = {}
        for job_id in job_ids:
            if job_id not in self.taken and not job_id.startswith("gone"):
                self.taken.add(job_id)
                rows[job_id] = Row(job_id, f"token-{len(self.calls)}")
        return rows


def _claim_all(groups: ClaimGroups, job_ids: list[str], worker: str = "w") -> dict[int, object]:
    """Each id claimed by its own thread; what each thread got (a row, None or an error)."""
    got: dict[int, object] = {}

    def one(i: int, job_id: str) -> None:
        try:
            got[i] = groups.claim(job_id, worker)
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=one, args=(i, j)) for i, j in enumerate(job_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    return got


def _waiting(groups: ClaimGroups, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(groups._waiting) < count:
        assert time.monotonic() < deadline, "threads never queued"
        time.sleep(0.001)


def test_a_lone_claim_runs_at_once_as_its_own_statement():
    statement = Statement()
    groups = ClaimGroups(None, lease_s=60, claim=statement)
    assert groups.claim("a", "w") == Row("a", "token-1")
    assert groups.claim("b", "w") == Row("b", "token-2")
    assert statement.calls == [("w", ["a"]), ("w", ["b"])]
    assert groups.claim("a", "w") is None  # already claimed


def _behind_a_running_claim(
    statement: Statement, *bursts: tuple[list[str], str]
) -> tuple[ClaimGroups, object, list[dict[int, object]]]:
    """A claim of "first" held in its statement while each burst (job ids, worker name) queues
    behind it; then the statement is let go. What "first" got, and what each burst's threads got."""
    groups = ClaimGroups(None, lease_s=60, claim=statement)
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["first"] = groups.claim("first", "w")
        except RuntimeError as exc:
            outcome["first"] = exc

    leader = threading.Thread(target=first)
    leader.start()
    assert statement.entered.wait(10)
    results: list[dict[int, object]] = [{} for _ in bursts]
    threads = [
        threading.Thread(target=lambda r=r, ids=ids, w=w: r.update(_claim_all(groups, ids, w)))
        for r, (ids, w) in zip(results, bursts, strict=True)
    ]
    for thread in threads:
        thread.start()
    _waiting(groups, sum(len(ids) for ids, _ in bursts))
    statement.gate.set()
    for thread in [*threads, leader]:
        thread.join(10)
    return groups, outcome["first"], results


def test_claims_arriving_during_a_claim_are_made_by_one_statement():
    statement = Statement(hold_first=True)
    later = [f"job-{i}" for i in range(20)]
    groups, first, [result] = _behind_a_running_claim(statement, (later, "w"))
    assert first == Row("first", "token-1")
    assert statement.calls[0] == ("w", ["first"])
    assert len(statement.calls) == 2 and sorted(statement.calls[1][1]) == sorted(later)
    assert {i: row.id for i, row in result.items()} == dict(enumerate(later))
    assert {row.claim_token for row in result.values()} == {"token-2"}
    assert not groups._busy and not groups._waiting


def test_a_group_is_at_most_max_group_jobs_and_never_mixes_worker_names():
    statement = Statement(hold_first=True)
    many = [f"job-{i}" for i in range(MAX_GROUP + 10)]
    _, _, results = _behind_a_running_claim(statement, (many, "w"), (["x", "y"], "other"))
    later = statement.calls[1:]
    assert all(len(ids) <= MAX_GROUP for _, ids in later)
    assert sorted(i for w, ids in later if w == "w" for i in ids) == sorted(many)
    assert [sorted(ids) for w, ids in later if w == "other"] == [["x", "y"]]
    assert all(isinstance(row, Row) for result in results for row in result.values())


def test_a_job_twice_in_one_group_is_claimed_once():
    statement = Statement(hold_first=True)
    _, _, [result] = _behind_a_running_claim(statement, (["a", "a", "b"], "w"))
    assert sorted(statement.calls[1][1]) == ["a", "b"]  # sent once
    rows = [result[0], result[1]]
    assert rows.count(None) == 1 and Row("a", "token-2") in rows
    assert result[2] == Row("b", "token-2")


@pytest.mark.parametrize("fail_on", [1, 2])
def test_an_error_reaches_every_thread_of_its_group_and_the_next_group_still_runs(fail_on):
    statement = Statement(hold_first=True, fail_on=fail_on)
    groups, first, [result] = _behind_a_running_claim(statement, (["a", "b"], "w"))
    failed = [first] if fail_on == 1 else list(result.values())
    assert failed and all(isinstance(error, RuntimeError) for error in failed)
    if fail_on == 1:
        assert sorted(row.id for row in result.values()) == ["a", "b"]
    else:
        assert first == Row("first", "token-1")
    assert not groups._busy and not groups._waiting
    assert groups.claim("c", "w") == Row("c", f"token-{len(statement.calls)}")  # not stuck


def test_a_job_nobody_can_claim_is_none_for_its_thread_alone():
    groups = ClaimGroups(None, lease_s=60, claim=Statement())
    assert _claim_all(groups, ["gone-1", "b"]) in (
        {0: None, 1: Row("b", "token-1")},
        {0: None, 1: Row("b", "token-2")},
    )
