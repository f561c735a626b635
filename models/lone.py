"""A hot statement that runs alone in autocommit, straight on psycopg when it can.

A plain job's claim and end in the worker, and a plain submit's INSERT in the API, are one
autocommit statement each. Through SQLAlchemy's `Connection.execute` each paid ~0.27 ms of CPU
per call, half of it SQLAlchemy's own per-call work (the statement's cache key, an execution
context, a result object, the isolation level set and reset) around psycopg's ~0.15 ms
(issue 17; docs/performance.md, "Session 8"). Here the statement is compiled once per dialect,
with its type processors, and run on the pool's psycopg connection: the same SQL, the same bound
values (SQLAlchemy's own bind and result processors), the same one round trip. A psycopg error
comes back as SQLAlchemy's (`DBAPIError.instance`: a refused connection is still the
`OperationalError` the API answers 503 to), and on a dropped connection the pool's older
connections are invalidated with it, as `Connection.execute` does.

The statement goes through SQLAlchemy as before on any other driver (SQLite), and on an engine
that something watches (cursor or error listeners: tracing, statement counters in tests; SQL
echo): what they watch stays visible to them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.sql.base import Executable

from models.db import autocommit

Processor = Callable[[Any], Any]


@dataclass
class _Compiled:
    """The statement as psycopg runs it: SQL, its constant values (already processed), the
    per-name bind processors of the values a call binds, the RETURNING row's columns and type;
    the per-column result processors once a row has said what the server sends (a processor
    may depend on it: NUMERIC or FLOAT)."""

    sql: str
    constants: dict[str, Any]
    #: the names each call must bind (SQLAlchemy refuses a call without them; so does this)
    required: frozenset[str]
    binds: dict[str, Processor]
    columns: tuple[Any, ...]
    row: Any
    results: tuple[Processor | None, ...] | None = None


class LoneStatement:
    """One statement run alone in autocommit (atomic by itself, committed when it returns)."""

    def __init__(self, statement: Executable, *, column_keys: Sequence[str] | None = None):
        self.statement = statement
        #: an INSERT without `.values()` lists its columns from its parameters: fixed here
        self.column_keys = list(column_keys) if column_keys is not None else None
        #: per dialect object: its processors follow its settings (a JSON serializer, say)
        self._compiled: WeakKeyDictionary[Dialect, _Compiled] = WeakKeyDictionary()

    def first(self, engine: Engine, params: Mapping[str, Any]) -> Any:
        """The first RETURNING row (attributes by column name), or None when no row matched."""
        rows = self._call(engine, params, fetch=True)
        return rows[0] if rows else None

    def all(self, engine: Engine, params: Mapping[str, Any]) -> list[Any]:
        """Every RETURNING row (a statement that writes several rows: grouped claims)."""
        return self._call(engine, params, fetch=True)

    def run(self, engine: Engine, params: Mapping[str, Any]) -> None:
        """Execute it; nothing read back."""
        self._call(engine, params, fetch=False)

    def _call(self, engine: Engine, params: Mapping[str, Any], *, fetch: bool) -> list[Any]:
        if _direct(engine):
            return self._run(engine, params, fetch=fetch)
        with autocommit(engine) as conn:
            result = conn.execute(self.statement, params)
            return result.all() if fetch else []

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is None:
            found = self._compiled[dialect] = _compile(self.statement, dialect, self.column_keys)
        return found

    def _run(self, engine: Engine, params: Mapping[str, Any], *, fetch: bool) -> list[Any]:
        dialect = engine.dialect
        compiled = self.compiled(dialect)
        values = _bound(compiled, params)
        try:
            proxied = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # as Connection() wraps it: "database down"
            raise _wrapped(engine, None, exc, compiled.sql, values) from exc
        try:
            raw = _execute(engine, proxied, compiled, values, fetch=fetch)
        finally:
            proxied.close()
        return _rows(compiled, raw)

    def each(self, engine: Engine, params_seq: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The statement once for each set of values, all in one transaction and one COMMIT
        (grouped ends: worker/ends.py); each run's first RETURNING row, or None. An error before
        the COMMIT was sent is `NotWritten` (rolled back: nothing of it written); an error of
        the COMMIT itself is raised as it is, as an autocommit statement's would be: whether it
        was written is then unknown."""
        if not _direct(engine):
            return self._each_through_sqlalchemy(engine, params_seq)
        dialect = engine.dialect
        compiled = self.compiled(dialect)
        error, cursor = dialect.loaded_dbapi.Error, None
        try:
            values_seq = [_bound(compiled, params) for params in params_seq]
            proxied = engine.raw_connection()
        except error as exc:
            raise NotWritten() from _wrapped(engine, None, exc, compiled.sql, {})
        except ArgumentError as exc:
            raise NotWritten() from exc
        dbapi = proxied.dbapi_connection
        try:
            try:
                cursor = dbapi.cursor()  # lent out of autocommit: the first statement BEGINs
                cursor.executemany(compiled.sql, values_seq, returning=True)  # one pipeline
                raw = [cursor.fetchone() for _ in cursor.results()]
                if compiled.results is None and any(raw):
                    compiled.results = _result_processors(compiled, dialect, cursor)
            except error as exc:
                wrapped = _wrapped(engine, proxied, exc, compiled.sql, values_seq, cursor)
                _roll_back(proxied)
                raise NotWritten() from wrapped
            try:
                dbapi.commit()
            except error as exc:
                raise _wrapped(engine, proxied, exc, "COMMIT", {}) from exc
        finally:
            if cursor is not None:
                cursor.close()
            proxied.close()
        return [None if one is None else _rows(compiled, [one])[0] for one in raw]

    def _each_through_sqlalchemy(
        self, engine: Engine, params_seq: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        with engine.connect() as conn:  # closing it rolls back a transaction left open
            try:
                conn.begin()
                rows = [conn.execute(self.statement, params).first() for params in params_seq]
            except (DBAPIError, ArgumentError) as exc:
                raise NotWritten() from exc
            conn.commit()
        return rows


class NotWritten(Exception):
    """Statements meant as one transaction failed before their COMMIT (the cause says why):
    rolled back, nothing of them written, each can be run again on its own."""


def _bound(compiled: _Compiled, params: Mapping[str, Any]) -> dict[str, Any]:
    """The values a call binds, processed as SQLAlchemy would, with the statement's constants."""
    if not compiled.required <= params.keys():
        missing = ", ".join(sorted(compiled.required - params.keys()))
        raise ArgumentError(f"a value is required for bind parameters {missing}")
    values = compiled.constants | dict(params)  # the constants processed once, at compile
    for name in params:
        if (process := compiled.binds.get(name)) is not None:
            values[name] = process(values[name])
    return values


def _rows(compiled: _Compiled, raw: list[Any]) -> list[Any]:
    """psycopg's tuples as rows by column name, through the columns' result processors."""
    if not raw:
        return []
    make, results = compiled.row._make, compiled.results
    return [
        make(
            value if process is None else process(value)
            for value, process in zip(one, results, strict=True)
        )
        for one in raw
    ]


def _roll_back(proxied: Any) -> None:
    """Roll back a failed transaction; a connection that cannot is not lent again."""
    if proxied.is_valid:
        try:
            proxied.dbapi_connection.rollback()
        except Exception as exc:  # the server rolls back what a closed connection left
            proxied.invalidate(exc)


def _execute(
    engine: Engine, proxied: Any, compiled: _Compiled, values: dict[str, Any], *, fetch: bool
) -> list[Any]:
    """Run it in autocommit on the pooled connection, and lend the connection back as it was
    lent (out of autocommit: its other users open transactions) or invalidated."""
    dialect, dbapi, cursor = engine.dialect, proxied.dbapi_connection, None
    error = dialect.loaded_dbapi.Error
    try:
        dbapi.autocommit = True  # set back below, and at the next checkout (models/db.py)
        cursor = dbapi.cursor()
        cursor.execute(compiled.sql, values)
        raw = cursor.fetchall() if fetch else []
        if raw and compiled.results is None:
            compiled.results = _result_processors(compiled, dialect, cursor)
        return raw
    except error as exc:
        raise _wrapped(engine, proxied, exc, compiled.sql, values, cursor) from exc
    finally:
        if cursor is not None:
            cursor.close()
        if proxied.is_valid:
            try:
                dbapi.autocommit = False
            except error as exc:  # broken in a way is_disconnect did not name: not lent again
                proxied.invalidate(exc)


def _wrapped(
    engine: Engine, proxied: Any, exc: Exception, sql: str, values: dict, cursor: Any = None
) -> DBAPIError:
    """The psycopg error as SQLAlchemy's execution raises it. On a disconnect the connection is
    invalidated and, as `Connection._handle_dbapi_exception` does, so is every connection the
    pool made before it (a failover leaves them all stale): each is replaced at its checkout."""
    dialect = engine.dialect
    dbapi = proxied.dbapi_connection if proxied is not None else None
    invalidated = dialect.is_disconnect(exc, dbapi, cursor)
    if invalidated and proxied is not None:  # (a failed connect leaves the pool as it is)
        engine.pool._invalidate(proxied, exc)
    return DBAPIError.instance(
        sql,
        values,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=engine.hide_parameters,
        connection_invalidated=invalidated,
        dialect=dialect,
    )


def _direct(engine: Engine) -> bool:
    """psycopg, and nobody watching statements: no cursor or error listeners (tracing, tests
    that count statements), no SQL echo."""
    dispatch = engine.dispatch
    return (
        engine.dialect.driver == "psycopg"
        and not engine.echo
        and not dispatch.before_cursor_execute
        and not dispatch.after_cursor_execute
        and not engine.dialect.dispatch.handle_error
    )


def _compile(statement: Executable, dialect: Dialect, column_keys: list[str] | None) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=column_keys)
    if (
        compiled.positional
        or compiled.escaped_bind_names
        or compiled.literal_execute_params
        or compiled.post_compile_params
    ):
        raise ValueError("a lone statement needs plain named parameters known at compile time")
    # one processor per name, as SQLAlchemy keeps them (a name bound twice is processed once)
    binds: dict[str, Processor] = {}
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            binds[name] = process
    columns = tuple(getattr(statement, "exported_columns", ()))
    row = namedtuple("Row", [c.key for c in columns]) if columns else None
    required = frozenset(name for bind, name in compiled.bind_names.items() if bind.required)
    constants = {
        name: binds[name](value) if name in binds else value
        for name, value in compiled.params.items()
        if name not in required
    }
    return _Compiled(str(compiled), constants, required, binds, columns, row)


def _result_processors(
    compiled: _Compiled, dialect: Dialect, cursor: Any
) -> tuple[Processor | None, ...]:
    if len(cursor.description) != len(compiled.columns):
        raise ValueError("the RETURNING row does not match the statement's columns")
    return tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, described.type_code)
        for column, described in zip(compiled.columns, cursor.description, strict=True)
    )
