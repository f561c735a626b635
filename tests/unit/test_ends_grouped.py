"""worker/ends.py: ends that threads write while an end is in progress are written as one
group, in the keys' order; a group that wrote nothing is written again end by end; a COMMIT
that failed reaches every thread of its group. The statement is a recording stand-in (the real
one runs in tests/integration/test_end_groups.py on PostgreSQL)."""

from __future__ import annotations

import threading
import time

from models.lone import NotWritten
from worker.ends import EndGroups


class Statement:
    """`first` holds its first call until `gate` opens; `each` fails as told."""

    def __init__(self, *, each_fails: BaseException | None = None):
        self.firsts: list[str] = []
        self.groups: list[list[str]] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.each_fails = each_fails

    def first(self, engine, values):
        self.firsts.append(values["job_id"])
        if len(self.firsts) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        return f"row-{values['job_id']}"

    def each(self, engine, values_seq):
        self.groups.append([values["job_id"] for values in values_seq])
        if self.each_fails is not None:
            raise self.each_fails
        return [
            None if v["job_id"].startswith("lost") else f"row-{v['job_id']}" for v in values_seq
        ]


def _behind_a_running_end(statement: Statement, ends: list[tuple[str, str]]) -> dict[str, object]:
    """An end of "first" held in its statement while `ends` (job id, key id) queue behind it;
    what each job's thread got (a row, None or an error)."""
    groups = EndGroups(None, statement)
    got: dict[str, object] = {}

    def one(job_id: str, key_id: str) -> None:
        try:
            got[job_id] = groups.end({"job_id": job_id}, key_id)
        except Exception as exc:
            got[job_id] = exc

    leader = threading.Thread(target=one, args=("first", "k"))
    leader.start()
    assert statement.entered.wait(10)
    threads = [threading.Thread(target=one, args=end) for end in ends]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(groups._waiting) < len(ends):
        assert time.monotonic() < deadline, "threads never queued"
        time.sleep(0.001)
    statement.gate.set()
    for thread in [*threads, leader]:
        thread.join(10)
        assert not thread.is_alive()
    assert not groups._busy and not groups._waiting
    return got


def test_a_lone_end_is_its_own_autocommit_statement():
    statement = Statement()
    statement.gate.set()
    assert EndGroups(None, statement).end({"job_id": "a"}, "k") == "row-a"
    assert statement.firsts == ["a"] and statement.groups == []


def test_ends_arriving_during_an_end_are_one_group_in_key_then_job_order():
    statement = Statement()
    ends = [("j3", "kb"), ("j1", "kb"), ("j2", "ka"), ("lost-1", "ka")]
    got = _behind_a_running_end(statement, ends)
    assert statement.groups == [["j2", "lost-1", "j1", "j3"]]  # ka before kb, then by job
    assert got == {"first": "row-first", "j1": "row-j1", "j2": "row-j2", "j3": "row-j3"} | {
        "lost-1": None  # its guard failed: None, as alone
    }


def test_a_group_that_wrote_nothing_is_written_again_end_by_end():
    statement = Statement(each_fails=NotWritten())
    got = _behind_a_running_end(statement, [("a", "k"), ("b", "k")])
    assert len(statement.groups) == 1
    assert sorted(statement.firsts) == ["a", "b", "first"]
    assert got == {"first": "row-first", "a": "row-a", "b": "row-b"}


def test_a_failed_commit_reaches_every_thread_of_its_group_and_nothing_is_run_again():
    statement = Statement(each_fails=RuntimeError("the connection was lost during COMMIT"))
    got = _behind_a_running_end(statement, [("a", "k"), ("b", "k")])
    assert statement.firsts == ["first"]  # the lone first end only: the group not re-run
    assert got["first"] == "row-first"
    assert all(isinstance(got[job], RuntimeError) for job in ("a", "b"))
