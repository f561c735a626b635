"""The database check a command makes before it uses the database: is it at this genq's schema?

`genq keys …` and `genq usage` read and write it at once, so a database behind the code or one
that does not answer ends them in one line. `genq api` and `genq worker` run for a long time:
behind the code they would start and then fail request after request (job after job), so they
refuse to start too; a database that does not answer yet is waited out as any outage is (a
warning; the API's `/readyz` and routes answer 503, naming `genq migrate` should it answer
unmigrated).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cli.render import console
from models.migrate import SchemaCheck


class DatabaseUnreachable(Exception):
    """The database did not answer the schema check; the message says why, in one line."""


def schema_problem(engine: Engine) -> str | None:
    """NOT_MIGRATED when the database is empty or behind this genq's schema, else None (one
    read of `alembic_version`); raises DatabaseUnreachable when the database does not answer."""
    try:
        return SchemaCheck(engine).problem()
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).splitlines() or [""])[0]
        raise DatabaseUnreachable(
            f"cannot reach the database ({type(cause).__name__}: {first_line})"
        ) from None


def refuse_behind(engine: Engine) -> str | None:
    """For a long-running process at start: the reason to refuse (NOT_MIGRATED), or None. A
    database that does not answer is not a reason: one warning line, and the process starts
    (its outage handling applies, e.g. `/readyz` says so). The check's connection is closed, so
    no forked process inherits it."""
    try:
        return schema_problem(engine)
    except DatabaseUnreachable as exc:
        console.print(f"[yellow]genq: WARNING: {exc}; starting anyway[/]")
        return None
    finally:
        engine.dispose()
