"""`genq migrate`: bring any empty or older database to the newest schema with Alembic."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from models.db import get_engine


def alembic_config(database_url: str) -> Config:
    """Alembic configured in code, so no alembic.ini has to sit in the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("models") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    with get_engine(database_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


#: what every part of genq says when the database is behind the code (or empty)
NOT_MIGRATED = "database not migrated: run `genq migrate`"


class SchemaCheck:
    """Is the database behind this genq's schema? Asked until it is not, then never again (a
    database does not fall behind while genq runs), so it costs nothing once migrated.

    A revision this genq does not know is newer: migrations are additive, so code still running
    the previous release stays ready against it during an upgrade (docs/operations.md).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        head = script.get_current_head()
        #: revisions older than head; None is an empty database
        self.behind = ({r.revision for r in script.walk_revisions()} - {head}) | {None}
        self._current = False

    def problem(self) -> str | None:
        """NOT_MIGRATED, or None when the schema is current; raises when the database is down."""
        if self._current:
            return None
        with self.engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
        if revision in self.behind:
            return NOT_MIGRATED
        self._current = True
        return None
