"""models/tokens.py: tiktoken counts tokens with the network unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY, count_messages, count_text

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = "network blocked by genq unit test"

#: prefix of every child script: no socket can resolve or connect from here on
NO_NETWORK = textwrap.dedent(
    f"""
    import socket, sys

    def _blocked(*args, **kwargs):
        raise OSError({BLOCKED!r})

    socket.socket.connect = _blocked
    socket.socket.connect_ex = _blocked
    socket.getaddrinfo = _blocked
    socket.create_connection = _blocked
    """
)


def run_child(body: str, *args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    env["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK + textwrap.dedent(body), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_encodings_makes_tiktoken_work_offline(tmp_path):
    # Given a child process with no network and an empty tiktoken cache
    cache = tmp_path / "fresh-cache"
    assert not cache.exists()
    # When it installs the bundled encodings and counts tokens
    result = run_child(
        """
        from pathlib import Path
        from models.tokens import install_encodings, count_text

        install_encodings(Path(sys.argv[1]))
        print(count_text("hello world"), count_text("hello world", "cl100k_base"))
        try:
            socket.create_connection(("openaipublic.blob.core.windows.net", 443))
        except OSError as exc:
            print("still blocked:", exc)
        """,
        str(cache),
        cache_dir=tmp_path / "unused-cache",
    )
    # Then both encodings count "hello world" as 2 tokens, and the network really was blocked
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2 2"
    assert lines[1] == f"still blocked: {BLOCKED}"
    assert len(list(cache.iterdir())) == 2


def test_without_install_encodings_tiktoken_needs_the_network(tmp_path):
    # Given the same blocked network and an empty cache, but no install_encodings
    # When tiktoken is asked for the encoding
    result = run_child(
        """
        import tiktoken

        print(len(tiktoken.get_encoding("o200k_base").encode("hello world")))
        """,
        cache_dir=tmp_path / "empty-cache",
    )
    # Then it fails trying to download: the test above would notice a broken install
    assert result.returncode != 0
    assert result.stdout == ""
    assert BLOCKED in result.stderr


def test_install_encodings_is_idempotent(tmp_path, encodings_dir):
    # Given encodings already installed in a directory
    files = {p.name: p.stat().st_mtime_ns for p in encodings_dir.iterdir()}
    # When installed again
    # Then nothing is rewritten and no temporary file is left behind
    from models.tokens import install_encodings

    install_encodings(encodings_dir)
    assert {p.name: p.stat().st_mtime_ns for p in encodings_dir.iterdir()} == files
    assert not any(name.endswith(".tmp") for name in files)


@pytest.mark.parametrize(
    ("text", "encoding", "expected"),
    [
        ("hello world", "o200k_base", 2),
        ("hello world", "cl100k_base", 2),
        ("", "o200k_base", 0),
        ("user", "o200k_base", 1),
        ("<|endoftext|>", "o200k_base", 7),
    ],
)
def test_count_text(text, encoding, expected):
    assert count_text(text, encoding) == expected


def test_count_messages_adds_three_per_message_and_three_for_the_reply():
    # Given two messages
    messages = [
        {"role": "system", "content": "hello world"},
        {"role": "user", "content": "hello world"},
    ]
    # When counted
    # Then 3 (reply) + 2 * 3 (per message) + roles + contents
    expected = 3 + 2 * 3 + count_text("system") + count_text("user") + 2 * count_text("hello world")
    assert (TOKENS_PER_MESSAGE, TOKENS_PER_REPLY) == (3, 3)
    assert count_messages(messages) == expected == 15


def test_count_messages_of_nothing_is_the_reply_priming():
    assert count_messages([]) == 3
