"""What a running API holds: settings, engine, catalogue, publisher, schema check; built once."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from api.enqueue import Publisher
from models.catalogue import Catalogue, get_catalogue
from models.db import get_engine
from models.migrate import SchemaCheck
from models.planning import Defaults
from models.settings import Settings
from models.tokens import install_encodings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    catalogue: Catalogue
    publisher: Publisher
    #: is the database migrated? /readyz and the database error handlers ask
    schema: SchemaCheck

    @property
    def defaults(self) -> Defaults:
        return Defaults(
            tier=self.settings.default_tier,
            deadline_s=self.settings.job_deadline_s,
            max_deadline_s=self.settings.max_job_deadline_s,
        )

    @classmethod
    def build(cls, settings: Settings) -> Services:
        install_encodings(settings.tiktoken_cache_dir)
        engine = get_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            catalogue=get_catalogue(settings.catalogue_path),
            publisher=Publisher(settings.redis_url),
            schema=SchemaCheck(engine),
        )
