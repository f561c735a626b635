"""Unit-test fixtures: no Redis, no database, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.tokens import install_encodings


@pytest.fixture(scope="session", autouse=True)
def encodings_dir(tmp_path_factory) -> Path:
    """tiktoken's encodings unpacked from the bundled `bpe-openai` files, never downloaded."""
    return install_encodings(tmp_path_factory.mktemp("unit-tiktoken"))
