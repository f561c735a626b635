"""Fixtures of the HTTP-level integration tests: the app in-process, and a fresh API key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.helpers import auth, new_key


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def key(settings) -> dict[str, str]:
    """`Authorization` headers of a new key without a budget."""
    return auth(new_key(settings.database_url))
