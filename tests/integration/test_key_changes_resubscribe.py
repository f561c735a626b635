"""The API's key cache across a Redis restart (api/key_cache.py, models/key_events.py).

Pub/sub delivers at most once: what is published while Redis is away is lost. So an API process
whose subscription broke subscribes again by itself, drops its whole cache when it does (a
change may have been missed), and from then on a published change evicts the key as before.
A redis-server of the test's own is stopped and started again on the same port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api.main import create_app
from models.db import get_engine, session_scope
from models.key_events import announce_key_changed
from models.keys import ApiKey
from tests.helpers import auth, free_port, new_key, start_redis_server, wait_until

#: long enough that only an eviction, never the TTL, can make a cached key read again here
TTL_S = 120


@pytest.fixture
def restartable_redis() -> Iterator[tuple[int, list]]:
    """A private redis-server's port, and the one running process (the test may replace it)."""
    port = free_port()
    running = [start_redis_server(port)]
    try:
        yield port, running
    finally:
        for proc in running:
            proc.terminate()
            proc.wait(timeout=10)


def revoke(database_url: str, key_id: str) -> None:
    """Revoke the key in the database only, as a change whose message was lost."""
    with session_scope(get_engine(database_url)) as session:
        row = session.get(ApiKey, key_id)
        row.revoked_at = row.created_at


def key_id_of(database_url: str, name: str) -> str:
    with session_scope(get_engine(database_url)) as session:
        return session.exec(select(ApiKey.id).where(ApiKey.name == name)).one()


def status(client: TestClient, secret: str) -> int:
    return client.get("/v1/jobs", headers=auth(secret)).status_code


def test_after_a_redis_restart_the_cache_is_dropped_and_changes_evict_again(
    settings, restartable_redis
):
    port, running = restartable_redis
    redis_url = f"redis://127.0.0.1:{port}/0"
    app = create_app(settings.model_copy(update={"auth_cache_s": TTL_S, "redis_url": redis_url}))
    missed = new_key(settings.database_url, "missed")
    later = new_key(settings.database_url, "later")
    with TestClient(app) as client:
        # Given two keys the API has verified and keeps in memory
        assert status(client, missed) == 200 and status(client, later) == 200
        # When Redis stops, a key is revoked meanwhile (its message is lost), and Redis returns
        stopped = running.pop()
        stopped.terminate()
        stopped.wait(timeout=10)
        revoke(settings.database_url, key_id_of(settings.database_url, "missed"))
        assert status(client, missed) == 200  # still served from memory: nothing said otherwise
        running.append(start_redis_server(port))
        # Then the API subscribes again and drops its whole cache: the missed revocation holds
        wait_until(
            lambda: status(client, missed) == 401,
            timeout_s=30,
            what="the cache dropped on resubscribing (well before the TTL)",
        )
        # And a change published after the restart evicts the key at once, as before it
        assert status(client, later) == 200  # read again, and kept again
        later_id = key_id_of(settings.database_url, "later")
        revoke(settings.database_url, later_id)
        assert status(client, later) == 200  # cached: only the message can make it read again
        assert announce_key_changed(redis_url, later_id) is None
        wait_until(
            lambda: status(client, later) == 401,
            timeout_s=10,
            what="the revocation published after the restart to evict the key",
        )
