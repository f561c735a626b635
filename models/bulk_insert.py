"""Inserting many job rows at once, in the caller's transaction: COPY on PostgreSQL, one
executemany elsewhere.

A batch of 50,000 lines must be stored at thousands of jobs per second. Through an INSERT per
row (even pipelined), PostgreSQL parses and executes each statement and SQLAlchemy runs every
column's bind processing in Python; `COPY … FROM STDIN` streams the rows instead. The values
are prepared as the columns' own types would bind them (JSON as `json.dumps` text, money
quantized as `Money` does), so a row reads back the same either way
(tests/integration/test_bulk_insert.py).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, insert
from sqlmodel import Session

from models.db import Money
from models.jobs import Job

_JOBS = Job.__table__
_INSERT = insert(_JOBS)


def insert_jobs(session: Session, rows: list[dict[str, Any]]) -> None:
    """Store `rows` (column name → value, the same keys in every row) in the jobs table."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(_INSERT, rows)
        return
    columns = list(rows[0])
    written: dict[int, str] = {}  # JSON text by the id of a value the rows share (kept alive)
    convert = [_converter(name, connection.dialect, written) for name in columns]
    names = ", ".join(f'"{name}"' for name in columns)
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY jobs ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([fix(row[name]) for fix, name in zip(convert, columns, strict=True)])


def _converter(name: str, dialect: Any, written: dict[int, str]):
    """How a value of column `name` is written: as its type binds it; a JSON value several
    rows share (a plan's routing record) is serialised once."""
    kind = _JOBS.c[name].type
    if isinstance(kind, JSON):

        def as_json(value: Any) -> str | None:
            if value is None:
                return None
            if (text := written.get(id(value))) is None:
                text = written[id(value)] = json.dumps(value)
            return text

        return as_json
    if isinstance(kind, Money):
        return lambda value: kind.process_bind_param(value, dialect)
    return lambda value: value
