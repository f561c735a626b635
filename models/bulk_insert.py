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
    convert = [_converter(name, connection.dialect) for name in columns]
    names = ", ".join(f'"{name}"' for name in columns)
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY jobs ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([fix(row[name]) for fix, name in zip(convert, columns, strict=True)])


def _converter(name: str, dialect: Any):
    """How a value of column `name` is written: as its type binds it."""
    kind = _JOBS.c[name].type
    if isinstance(kind, JSON):
        return lambda value: None if value is None else json.dumps(value)
    if isinstance(kind, Money):
        return lambda value: kind.process_bind_param(value, dialect)
    return lambda value: value
