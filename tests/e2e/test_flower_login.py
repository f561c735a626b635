"""`genq flower` refuses to run open unless told so explicitly, and then says it loudly."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.helpers import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def genq_flower(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "flower", f"--port={free_port()}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("extra_env", "code", "needle"),
    [
        ({}, 1, "GENQ_FLOWER_BASIC_AUTH=user:password"),
        ({"GENQ_FLOWER_BASIC_AUTH": "admin"}, 2, "invalid setting GENQ_FLOWER_BASIC_AUTH"),
    ],
)
def test_flower_without_a_valid_login_does_not_start(stack, extra_env, code, needle):
    result = genq_flower({**stack.env, **extra_env})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1 and needle in lines[0], result.stderr


def test_unauthenticated_flower_starts_with_a_warning(stack):
    url = stack.flower("--unauthenticated")
    assert "WITHOUT authentication" in stack.log("flower")
    assert httpx.get(url, timeout=10).status_code == 200
