"""`genq chat` against a real API and worker (offline simulator), as a user would run it."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_cli import genq

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]


def test_chat_starts_a_conversation_and_continues_it(stack, env):
    api = stack.api()
    stack.worker()
    secret = genq("keys", "create", "chat", env=env).stdout.strip()
    client_env = {**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    # When a conversation is started with a first message
    first = genq(
        "chat",
        "--new",
        "--system",
        "Answer in one line.",
        "--context-tokens",
        "400",
        "--max-tokens",
        "30",
        "Name a spring flower",
        env=client_env,
    )
    # Then the reply alone is on stdout, the conversation's id on stderr
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("[synthetic]") and first.stdout.count("\n") == 1
    conversation_id = first.stderr.split("conversation ", 1)[1].split()[0]
    assert len(conversation_id) == 32
    # When the conversation continues
    second = genq("chat", conversation_id, "And a summer one?", "--json", env=client_env)
    assert second.returncode == 0, second.stderr
    assert '"conversation_id": "' + conversation_id + '"' in second.stdout
    # Then the API holds both exchanges, and the second job sent the first one
    headers = {"Authorization": f"Bearer {secret}"}
    shown = httpx.get(f"{api}/v1/conversations/{conversation_id}", headers=headers).json()
    assert [t["content"] for t in shown["turns"][::2]] == [
        "Name a spring flower",
        "And a summer one?",
    ]
    assert shown["turns"][1]["content"] == first.stdout.strip()
    jobs = httpx.get(f"{api}/v1/jobs", headers=headers).json()["data"]
    assert jobs[0]["context"]["turns_sent"] == 2 and jobs[0]["context"]["budget_tokens"] == 400
    assert shown["params"] == {"max_tokens": 30} and shown["system"] == "Answer in one line."


def test_chat_errors_are_one_line_on_stderr(stack, env):
    api = stack.api()
    secret = genq("keys", "create", "chat", env=env).stdout.strip()
    client_env = {**env, "GENQ_API_URL": api, "GENQ_API_KEY": secret}
    for args, needle in [
        (("chat", "0" * 32, "hello"), "404"),
        (("chat", "only-a-message"), "give CONVERSATION_ID and MESSAGE"),
        (("chat", "--new", "a", "b"), "give CONVERSATION_ID and MESSAGE"),
        (("chat", "0" * 32, "hello", "--system", "x"), "need --new"),
    ]:
        result = genq(*args, env=client_env)
        assert result.returncode == 1 and result.stdout == "", args
        assert needle in result.stderr and result.stderr.count("\n") == 1, result.stderr
