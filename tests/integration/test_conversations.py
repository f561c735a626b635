"""Conversations through the API and the worker's Runner, on SQLite and PostgreSQL, real Redis.

Each message's job is run by the real Runner against the offline simulator, wrapped so the test
sees the exact messages the provider was sent.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlmodel import select

from api.conversations import post_message
from api.services import Services
from models.catalogue import get_catalogue
from models.conversations import ConversationTurn, MessageCreate, claim_turn
from models.db import get_engine, session_scope
from models.errors import Conflict, PermanentProviderError
from models.jobs import Job
from models.keys import ApiKey
from models.tokens import count_messages
from tests.helpers import RecordingProvider, auth, new_key
from worker.retry import RetryPolicy
from worker.runner import Runner

SYSTEM = "You are a terse copywriter for a garden shop."
BUDGET = 300


@pytest.fixture
def engine(settings):
    return get_engine(settings.database_url)


@pytest.fixture
def provider() -> RecordingProvider:
    return RecordingProvider()


@pytest.fixture
def runner(engine, provider) -> Runner:
    return Runner(
        engine=engine,
        provider=provider,
        catalogue=get_catalogue(),
        retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_s=0.02),
        sleep=lambda _s: None,
    )


def start(client, key, **body) -> str:
    body = {"system": SYSTEM, "model": "gpt-4o-mini", "params": {"max_tokens": 40}, **body}
    answer = client.post("/v1/conversations", json=body, headers=key)
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"] == f"/v1/conversations/{answer.json()['id']}"
    return answer.json()["id"]


def say(client, key, conversation_id: str, content: str, status: int = 202) -> dict:
    answer = client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"content": content}, headers=key
    )
    assert answer.status_code == status, answer.text
    return answer.json()


def test_ten_turns_keep_the_system_message_and_the_newest_turns_within_the_budget(
    client, key, runner, provider
):
    # Given a conversation whose prompts may hold at most 300 tokens
    conversation_id = start(client, key, context_tokens=BUDGET)
    job_ids = []
    for number in range(10):
        before = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()["turns"]
        content = f"Message {number}: a tagline for our tulip bulbs, variant {number}."
        # When each message is sent and its job runs
        job = say(client, key, conversation_id, content)
        assert job["conversation_id"] == conversation_id and job["status"] == "queued"
        assert runner.run(job["id"]) == "succeeded"
        job_ids.append(job["id"])
        sent, context = provider.sent[-1], job["context"]
        # Then the prompt as sent fits the budget and is what the job recorded
        assert count_messages(sent) == context["prompt_tokens"] <= BUDGET
        # the system message is first and the new message last
        assert sent[0] == {"role": "system", "content": SYSTEM}
        assert sent[-1] == {"role": "user", "content": content}
        # between them, the newest turns in order, whole exchanges only
        middle = sent[1:-1]
        kept = [{"role": t["role"], "content": t["content"]} for t in before][
            len(before) - len(middle) :
        ]
        assert middle == kept and len(middle) % 2 == 0
        assert context["turns_total"] == len(before) == 2 * number
        assert context["turns_sent"] == len(middle)
        dropped = context["dropped_turns"]
        assert [d["index"] for d in dropped] == list(range(len(before) - len(middle)))
        assert [d["job_id"] for d in dropped] == [t["job_id"] for t in before[: len(dropped)]]
        if dropped:  # the newest exchange left out would not have fitted
            left_out = sum(t["tokens"] for t in before[len(dropped) - 2 : len(dropped)])
            assert context["prompt_tokens"] + left_out > BUDGET
    # The conversation holds all 20 turns; its cost is the sum of its 10 jobs
    shown = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()
    assert [t["role"] for t in shown["turns"]] == ["user", "assistant"] * 10
    assert [t["job_id"] for t in shown["turns"]] == [j for j in job_ids for _ in (0, 1)]
    assert all(t["tokens"] > 3 for t in shown["turns"])
    jobs = [client.get(f"/v1/jobs/{j}", headers=key).json() for j in job_ids]
    assert sum(Decimal(repr(j["cost_usd"])) for j in jobs) == Decimal(repr(shown["cost_usd"])) > 0
    assert shown["jobs"] == 10 and shown["turn_count"] == 20
    assert shown["usage"]["prompt_tokens"] == sum(j["usage"]["prompt_tokens"] for j in jobs)
    assert any(j["context"]["dropped_turns"] for j in jobs)  # the budget did bite


def test_a_message_while_the_last_one_runs_is_409_and_stores_nothing(client, key, runner):
    conversation_id = start(client, key)
    first = say(client, key, conversation_id, "Hello")
    refused = say(client, key, conversation_id, "Are you there?", status=409)
    assert refused["status"] == 409 and first["id"] in refused["detail"]
    assert len(client.get("/v1/jobs", headers=key).json()["data"]) == 1
    assert runner.run(first["id"]) == "succeeded"
    assert say(client, key, conversation_id, "Are you there?")["context"]["turns_total"] == 2


def test_the_turn_is_claimed_once_with_a_compare_and_set(engine, client, key):
    # Given two messages that both read the conversation idle (no job yet)
    conversation_id = start(client, key)
    with session_scope(engine) as session:
        key_id = session.exec(select(ApiKey.id)).first()
    with session_scope(engine) as session:
        claim_turn(session, conversation_id=conversation_id, key_id=key_id, seen=None, job_id="a")
    # When the second claims from the same reading, Then it is refused
    with pytest.raises(Conflict), session_scope(engine) as session:
        claim_turn(session, conversation_id=conversation_id, key_id=key_id, seen=None, job_id="b")


def test_two_messages_posted_at_once_accept_exactly_one(settings, client, key, engine):
    services = Services.build(settings)
    with session_scope(engine) as session:
        api_key = session.exec(select(ApiKey)).first()
    for _round in range(5):
        conversation_id = start(client, key)
        barrier, outcomes = threading.Barrier(2), []

        def post(text: str, conversation_id=conversation_id, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                body = MessageCreate(content=text)
                outcomes.append(
                    post_message(
                        services, key=api_key, conversation_id=conversation_id, body=body
                    ).id
                )
            except Conflict:
                outcomes.append("409")

        threads = [threading.Thread(target=post, args=(t,)) for t in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [outcome for outcome in outcomes if outcome != "409"]
        assert len(accepted) == 1 and outcomes.count("409") == 1
        with session_scope(engine) as session:
            stored = session.exec(select(Job.id).where(Job.conversation_id == conversation_id))
            assert list(stored) == accepted
    services.publisher.close()


def test_a_failed_or_cancelled_job_adds_no_turn(client, key, engine, runner, provider):
    conversation_id = start(client, key)
    provider.outcomes = [PermanentProviderError("refused", status_code=400)]
    failed = say(client, key, conversation_id, "First try")
    assert runner.run(failed["id"]) == "failed"
    cancelled = say(client, key, conversation_id, "Second try")
    assert client.post(f"/v1/jobs/{cancelled['id']}/cancel", headers=key).status_code == 200
    shown = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()
    assert shown["turns"] == [] and shown["jobs"] == 2
    # the next message retries from an empty history
    again = say(client, key, conversation_id, "Third try")
    assert again["context"] == {
        "turns_total": 0,
        "turns_sent": 0,
        "dropped_turns": [],
        "prompt_tokens": count_messages(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Third try"}]
        ),
        "budget_tokens": 128000 - 40,
    }
    assert runner.run(again["id"]) == "succeeded"
    turns = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()["turns"]
    assert [(t["role"], t["job_id"]) for t in turns] == [
        ("user", again["id"]),
        ("assistant", again["id"]),
    ]
    assert turns[0]["content"] == "Third try"


def test_what_does_not_fit_the_budget_is_422_naming_it_and_stores_nothing(client, key):
    conversation_id = start(client, key, context_tokens=30)
    refused = say(client, key, conversation_id, "a long message " * 20, status=422)
    assert "context budget is 30 tokens (context_tokens)" in refused["detail"]
    assert client.get("/v1/jobs", headers=key).json()["data"] == []
    shown = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()
    assert shown["last_job_id"] is None and shown["jobs"] == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "gpt-x"}, "unknown model"),
        ({"model": "dall-e-3"}, "makes image"),
        ({"context_tokens": 0}, "context_tokens"),
        ({"params": {"max_tokens": 0}}, "params.max_tokens"),
        ({"temperature": 1}, "temperature"),
    ],
)
def test_bad_conversation_settings_are_refused_with_the_reason(client, key, body, needle):
    answer = client.post("/v1/conversations", json=body, headers=key)
    assert answer.status_code == 422 and needle in answer.json()["detail"], answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/conversations", headers=key).json()["data"] == []


def test_another_keys_conversation_is_404(client, key, settings):
    conversation_id = start(client, key)
    other = auth(new_key(settings.database_url, name="other"))
    base = f"/v1/conversations/{conversation_id}"
    assert client.get(base, headers=other).status_code == 404
    assert client.post(f"{base}/messages", json={"content": "hi"}, headers=other).status_code == 404
    assert client.delete(base, headers=other).status_code == 404
    assert client.get("/v1/conversations", headers=other).json()["data"] == []
    assert client.get(base, headers=key).status_code == 200


def test_delete_removes_the_turns_and_cancels_the_unfinished_job(client, key, engine, runner):
    conversation_id = start(client, key)
    assert runner.run(say(client, key, conversation_id, "Hello")["id"]) == "succeeded"
    waiting = say(client, key, conversation_id, "And now?")
    assert client.delete(f"/v1/conversations/{conversation_id}", headers=key).status_code == 204
    assert client.get(f"/v1/conversations/{conversation_id}", headers=key).status_code == 404
    job = client.get(f"/v1/jobs/{waiting['id']}", headers=key).json()
    assert job["status"] == "cancelled" and job["conversation_id"] == conversation_id
    with session_scope(engine) as session:
        assert list(session.exec(select(ConversationTurn))) == []
    assert client.delete(f"/v1/conversations/{conversation_id}", headers=key).status_code == 404


def test_the_list_pages_newest_first_without_turns(client, key, runner):
    ids = [start(client, key, metadata={"n": n}) for n in range(3)]
    assert runner.run(say(client, key, ids[0], "Hello")["id"]) == "succeeded"
    first = client.get("/v1/conversations?limit=2", headers=key).json()
    second = client.get(f"/v1/conversations?limit=2&cursor={first['next_cursor']}", headers=key)
    page = [c["id"] for c in first["data"]] + [c["id"] for c in second.json()["data"]]
    assert sorted(page) == sorted(ids) and second.json()["next_cursor"] is None
    oldest = next(c for c in first["data"] + second.json()["data"] if c["id"] == ids[0])
    assert oldest["turns"] is None and oldest["turn_count"] == 2 and oldest["jobs"] == 1
    assert oldest["metadata"] == {"n": 0}


def test_a_plain_job_has_no_conversation(client, key):
    job = client.post("/v1/jobs", json={"kind": "text", "prompt": "Hi"}, headers=key).json()
    assert job["conversation_id"] is None and job["context"] is None


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def tool_round(client, key, runner, conversation_id: str) -> dict:
    """A question the model answers with a tool call, then the tool's result: the second job."""
    first = say(client, key, conversation_id, "What is the weather in Oslo?")
    assert runner.run(first["id"]) == "succeeded"
    turns = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()["turns"]
    call_id = turns[1]["tool_calls"][0]["id"]
    answer = client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"tool_results": [{"tool_call_id": call_id, "content": '{"temp_c": 21}'}]},
        headers=key,
    )
    assert answer.status_code == 202, answer.text
    assert runner.run(answer.json()["id"]) == "succeeded"
    return answer.json()


def test_tool_calls_are_answered_by_tool_results_and_kept_as_one_exchange(
    client, key, runner, provider
):
    # Given a conversation with a tool, whose first reply calls it
    params = {"max_tokens": 40, "tools": [WEATHER]}
    conversation_id = start(client, key, params=params)
    first = say(client, key, conversation_id, "What is the weather in Oslo?")
    assert runner.run(first["id"]) == "succeeded"
    turns = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()["turns"]
    assert turns[1]["role"] == "assistant" and turns[1]["content"] is None
    call_id = turns[1]["tool_calls"][0]["id"]
    assert turns[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    # Then a user message may not leave the call unanswered, nor may results answer another
    refused = say(client, key, conversation_id, "Hello?", status=422)
    assert f"the last reply called tools ({call_id})" in refused["detail"]
    wrong = client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"tool_results": [{"tool_call_id": "call_x", "content": "?"}]},
        headers=key,
    )
    assert wrong.status_code == 422 and call_id in wrong.json()["detail"]
    # When the result is sent, Then the job sends the call with it and the round is stored
    answer = client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"tool_results": [{"tool_call_id": call_id, "content": '{"temp_c": 21}'}]},
        headers=key,
    )
    assert answer.status_code == 202, answer.text
    assert runner.run(answer.json()["id"]) == "succeeded"
    assert [m["role"] for m in provider.sent[-1]] == ["system", "user", "assistant", "tool"]
    assert count_messages(provider.sent[-1]) < answer.json()["context"]["prompt_tokens"]  # + tools
    turns = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == call_id and turns[3]["content"]


def test_a_tool_round_is_dropped_whole_when_the_budget_is_tight(client, key, runner, provider):
    # Given the prompt a tool round's result needs (learnt from the same, deterministic, round)
    params = {"max_tokens": 40, "tools": [WEATHER]}
    needed = tool_round(client, key, runner, start(client, key, params=params))
    budget = needed["context"]["prompt_tokens"] + 5
    # When a conversation with just that budget runs the round and then a new question
    conversation_id = start(client, key, params=params, context_tokens=budget)
    assert tool_round(client, key, runner, conversation_id)["context"]["dropped_turns"] == []
    job = say(client, key, conversation_id, "Thanks!")
    # Then the four turns of the round are left out together
    assert [d["index"] for d in job["context"]["dropped_turns"]] == [0, 1, 2, 3]
    assert runner.run(job["id"]) == "succeeded"
    assert [m["role"] for m in provider.sent[-1]] == ["system", "user"]


def test_an_idempotency_key_replays_the_first_message_job(client, key, runner):
    conversation_id = start(client, key)
    url = f"/v1/conversations/{conversation_id}/messages"

    def send(body: dict, idempotency_key: str = "m-1"):
        return client.post(url, json=body, headers={**key, "Idempotency-Key": idempotency_key})

    first = send({"content": "Hello"})
    assert first.status_code == 202
    # a retry while the job runs gets the job, not the 409 of an unfinished turn
    assert send({"content": "Hello"}).json()["id"] == first.json()["id"]
    assert runner.run(first.json()["id"]) == "succeeded"
    # and after it finished, the job again: no second turn
    replayed = send({"content": "Hello"})
    assert replayed.status_code == 202 and replayed.json()["id"] == first.json()["id"]
    shown = client.get(f"/v1/conversations/{conversation_id}", headers=key).json()
    assert shown["jobs"] == 1 and shown["turn_count"] == 2
    # the same key with another message, or in another conversation, is a conflict
    assert send({"content": "Hello again"}).status_code == 409
    other = start(client, key)
    reused = client.post(
        f"/v1/conversations/{other}/messages",
        json={"content": "Hello"},
        headers={**key, "Idempotency-Key": "m-1"},
    )
    assert reused.status_code == 409 and "m-1" in reused.json()["detail"]
    assert send({"content": "Hello again"}, "m-2").status_code == 202
