"""Moderation as data: mode resolution, the outage rule, verdicts and the offline stand-in."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.moderation import (
    CATEGORIES,
    flagged_categories,
    input_texts,
    on_error_for,
    output_texts,
    parse_flagged_words,
    resolve_mode,
    verdict_of,
    with_mode,
)
from models.schemas import JobCreate
from models.settings import Settings
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator


@pytest.mark.parametrize(
    ("requested", "key", "deployment", "expected"),
    [
        (None, None, "off", "off"),
        (None, None, "flag", "flag"),
        (None, "block", "off", "block"),
        ("off", "block", "flag", "off"),
        ("flag", None, "block", "flag"),
        (None, "off", "block", "off"),
    ],
)
def test_the_job_then_the_key_then_the_deployment_decide(requested, key, deployment, expected):
    assert resolve_mode(requested, key, deployment) == expected


@pytest.mark.parametrize(
    ("mode", "setting", "expected"),
    [("block", None, "fail"), ("flag", None, "allow"), ("block", "allow", "allow"),
     ("flag", "fail", "fail")],
)  # fmt: skip
def test_the_outage_rule(mode, setting, expected):
    assert on_error_for(mode, setting) == expected


def test_the_resolved_mode_is_written_into_the_stored_policy():
    body = JobCreate.model_validate({"kind": "text", "prompt": "hi", "policy": {"tier": "economy"}})
    stored = with_mode(body, "block").model_dump(mode="json", exclude_none=True)
    assert stored["policy"] == {"tier": "economy", "moderation": "block"}
    assert body.policy.moderation is None  # the request itself is left as sent


def test_a_verdict_over_several_texts_keeps_every_flag_and_the_top_scores():
    verdict = verdict_of(
        [
            (False, {"hate": False, "violence": None}, {"hate": 0.2, "violence": 0.1}),
            (True, {"hate": False, "violence": True}, {"hate": 0.05, "violence": 0.9}),
            (True, {"sexual": True}, {"sexual": 0.7, "illicit": 0.3}),
        ],
        model="omni-moderation-latest",
    )
    assert verdict.flagged and verdict.categories == ["sexual", "violence"]
    assert verdict.scores == {"violence": 0.9, "sexual": 0.7, "illicit": 0.3}
    assert verdict.record()["synthetic"] is False and "error" not in verdict.record()


def test_flagged_words_match_whole_words_in_any_case():
    words = parse_flagged_words("Kill, spam:harassment ,")
    assert words == {"kill": "harassment", "spam": "harassment"}
    assert flagged_categories("KILL the lights", words) == {"harassment"}
    assert flagged_categories("skills and spammers", words) == set()


@pytest.mark.parametrize("spec", ["two words", "kill:violent", ":violence"])
def test_a_bad_flagged_word_is_refused_at_start_up(spec):
    with pytest.raises(ValidationError, match="WORD or WORD:CATEGORY"):
        Settings(_env_file=None, offline_flagged_words=spec)


def test_input_texts_are_every_messages_content_including_tool_results():
    messages = [
        {"role": "system", "content": "be kind"},
        {"role": "assistant", "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "result"},
    ]
    assert input_texts(messages) == ["be kind", "result"]
    calls = [{"function": {"name": "f", "arguments": '{"q": 1}'}}]
    assert output_texts("", calls) == ['{"q": 1}'] and output_texts("hi", None) == ["hi"]


def test_the_offline_stand_in_is_synthetic_and_deterministic():
    offline = OfflineProvider(Simulator(flagged_words=parse_flagged_words("kill:violence")))
    flagged = offline.moderate(model="m", texts=["time to kill"])
    clean = offline.moderate(model="m", texts=["a haiku"])
    assert flagged.synthetic and flagged.flagged and flagged.categories == ["violence"]
    assert flagged.scores["violence"] == 0.99
    assert not clean.flagged and max(clean.scores.values()) < 0.02
    assert clean == offline.moderate(model="m", texts=["a haiku"])
    assert set(clean.scores) <= set(CATEGORIES)


def test_moderation_settings_and_their_defaults():
    default = Settings(_env_file=None)
    assert (default.moderation, default.moderation_on_error) == ("off", None)
    assert default.moderation_model == "omni-moderation-latest"
    with pytest.raises(ValidationError):
        Settings(_env_file=None, moderation="strict")
    assert Settings(_env_file=None, moderation_on_error="").moderation_on_error is None


def test_the_job_summary_shows_the_verdicts():
    from cli.render import job_summary

    verdict = {"flagged": True, "categories": ["hate", "violence"], "synthetic": True}
    job = {
        "id": "j1", "kind": "text", "status": "failed", "model": "m", "attempts": 0,
        "cost_usd": 0, "error": {"type": "moderation_blocked", "message": "flagged"},
        "moderation": {"input": verdict, "output": None},
    }  # fmt: skip
    shown = job_summary(job)
    assert "moderation input: flagged (hate, violence), synthetic" in shown
    assert "moderation output" not in shown
    job["moderation"]["input"] = {"flagged": False, "error": "timeout", "synthetic": False}
    assert "moderation input: not checked (timeout)" in job_summary(job)
