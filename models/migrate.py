"""`genq migrate`: bring any empty or older database to the newest schema with Alembic."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

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
