"""What a running API holds: settings, engine, catalogue, publisher, schema check; built once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis.asyncio as aioredis
from sqlalchemy.engine import Engine

from api.enqueue import Publisher
from api.events import StreamSlots
from api.key_cache import VerifiedKeys
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
    #: the jobs' event streams (api/events.py); connects on first use, in the serving loop
    events: aioredis.Redis

    @property
    def defaults(self) -> Defaults:
        return Defaults(
            tier=self.settings.default_tier,
            deadline_s=self.settings.job_deadline_s,
            max_deadline_s=self.settings.max_job_deadline_s,
        )

    @cached_property
    def verified_keys(self) -> VerifiedKeys:
        return VerifiedKeys(self.settings.auth_cache_s)

    @cached_property
    def stream_slots(self) -> StreamSlots:
        return StreamSlots(self.events, self.settings.max_streams_per_key)

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
            events=aioredis.Redis.from_url(
                settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=2,
                # an XREAD blocks for up to a tick: a socket silent for longer is a dead Redis
                socket_timeout=settings.sse_poll_s + 5,
            ),
        )
