"""worker/providers/simulator.py and offline.py: deterministic text, real PNGs, scripted faults."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image

from models.errors import PermanentProviderError, RetryableProviderError
from models.schemas import ImageParams, TextParams
from models.settings import parse_faults
from models.tokens import count_messages, count_text
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import SYNTHETIC_LABEL, Simulator, draw_png

HAIKU = [{"role": "user", "content": "Write a haiku about spring"}]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def text_call(provider: OfflineProvider, max_tokens: int | None = None):
    return provider.generate_text(
        model="gpt-4o-mini", messages=HAIKU, params=TextParams(max_tokens=max_tokens)
    )


# -- text -------------------------------------------------------------------------------------


def test_same_prompt_gives_the_same_text():
    # Given two independent simulators
    # When both complete the same prompt
    first = Simulator().complete(HAIKU, max_tokens=None)
    second = Simulator().complete(HAIKU, max_tokens=None)
    # Then the reply and both token counts are identical
    assert first == second


def test_different_prompts_give_different_text():
    other = [{"role": "user", "content": "Write a limerick about autumn"}]
    assert (
        Simulator().complete(HAIKU, max_tokens=None)[0]
        != Simulator().complete(other, max_tokens=None)[0]
    )


@pytest.mark.parametrize("max_tokens", [None, 4, 50, 500])
def test_text_is_labelled_synthetic(max_tokens):
    text, _, _ = Simulator().complete(HAIKU, max_tokens=max_tokens)
    assert text.startswith(SYNTHETIC_LABEL)
    assert SYNTHETIC_LABEL == "[synthetic]"


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 50, 500])
@pytest.mark.parametrize(
    "content", ["Write a haiku about spring", "x", "Launch copy for the spring campaign, 3 lines"]
)
def test_completion_tokens_are_real_and_within_max_tokens(max_tokens, content):
    # Given a prompt and a max_tokens limit
    messages = [{"role": "user", "content": content}]
    # When the simulator completes it
    text, prompt_tokens, completion_tokens = Simulator().complete(messages, max_tokens=max_tokens)
    # Then the counts are what tiktoken says and the reply respects the limit
    assert text
    assert completion_tokens == count_text(text)
    assert 1 <= completion_tokens <= max_tokens
    assert prompt_tokens == count_messages(messages)


def test_default_reply_is_a_short_paragraph():
    _, _, completion_tokens = Simulator().complete(HAIKU, max_tokens=None)
    assert 4 <= completion_tokens <= 120


def test_offline_provider_reports_usage_from_the_simulator():
    # Given the offline provider with no faults
    provider = OfflineProvider(Simulator())
    # When it generates text
    result = text_call(provider, max_tokens=30)
    # Then usage is the real token count of prompt and reply
    assert result.text.startswith(SYNTHETIC_LABEL)
    assert result.usage.prompt_tokens == count_messages(HAIKU)
    assert result.usage.completion_tokens == count_text(result.text) <= 30
    assert result.usage.cached_tokens == 0


# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(256, 256), (512, 512), (1024, 1536), (1792, 1024)])
def test_draw_png_returns_a_real_png_of_the_requested_size(width, height):
    data = draw_png("a red fox", width, height)
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (width, height)
        assert image.mode == "RGB"


def test_draw_png_is_deterministic_per_prompt_and_index():
    assert draw_png("a red fox", 64, 64) == draw_png("a red fox", 64, 64)
    assert draw_png("a red fox", 64, 64, 0) != draw_png("a red fox", 64, 64, 1)
    assert draw_png("a red fox", 64, 64) != draw_png("a blue whale", 64, 64)


def test_offline_provider_generates_n_images():
    provider = OfflineProvider(Simulator())
    params = ImageParams(size="256x256", n=3, quality="standard")
    result = provider.generate_image(model="dall-e-2", prompt="a red fox", params=params)
    assert [(i.width, i.height, i.content_type) for i in result.images] == [
        (256, 256, "image/png")
    ] * 3
    assert len({i.data for i in result.images}) == 3
    assert (result.usage.images, result.usage.size, result.usage.quality) == (
        3,
        "256x256",
        "standard",
    )


# -- faults -----------------------------------------------------------------------------------


def test_scripted_429_then_success():
    # Given a simulator scripted to answer 429 once, then 200
    sim = Simulator(retry_after_s=2.5)
    sim.script.extend([429, 200])
    provider = OfflineProvider(sim)
    # When the provider is called twice
    with pytest.raises(RetryableProviderError) as info:
        text_call(provider)
    result = text_call(provider)
    # Then the first call is a retryable 429 carrying Retry-After, the second succeeds
    assert info.value.status_code == 429
    assert info.value.retry_after_s == 2.5
    assert info.value.kind == "rate_limited"
    assert result.text.startswith(SYNTHETIC_LABEL)
    assert not sim.script


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (429, RetryableProviderError, 1.0),
        (500, RetryableProviderError, None),
        (503, RetryableProviderError, None),
        (400, PermanentProviderError, None),
        (401, PermanentProviderError, None),
        (404, PermanentProviderError, None),
    ],
)
def test_scripted_status_maps_to_the_error_class(status, error, retry_after):
    sim = Simulator()
    sim.script.append(status)
    with pytest.raises(error) as info:
        OfflineProvider(sim).generate_image(
            model="dall-e-2", prompt="fox", params=ImageParams(size="256x256")
        )
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.retry_after_s == retry_after
    assert str(status) in info.value.detail


def test_script_runs_before_random_faults():
    sim = Simulator.from_spec(latency_ms=0, faults="500:1")
    sim.script.extend([200, 200])
    provider = OfflineProvider(sim)
    text_call(provider)
    text_call(provider)
    with pytest.raises(RetryableProviderError):
        text_call(provider)


def test_certain_fault_always_fails():
    provider = OfflineProvider(Simulator.from_spec(latency_ms=0, faults="500:1"))
    for _ in range(25):
        with pytest.raises(RetryableProviderError) as info:
            text_call(provider)
        assert info.value.status_code == 500


def test_no_faults_never_fail():
    sim = Simulator.from_spec(latency_ms=0, faults="")
    assert all(sim.next_fault() is None for _ in range(500))


def test_seeded_fault_draws_follow_the_probabilities():
    # Given 429 with p=0.3 and 500 with p=0.1 and a seeded generator
    sim = Simulator(faults=parse_faults("429:0.3,500:0.1"), rng=random.Random(1))
    # When 2000 outcomes are drawn
    counts = Counter(getattr(sim.next_fault(), "status", 200) for _ in range(2000))
    # Then the shares are near 30 % / 10 % / 60 % (about 5 standard deviations of slack)
    assert set(counts) == {200, 429, 500}
    assert 500 <= counts[429] <= 700
    assert 135 <= counts[500] <= 265
    assert 1090 <= counts[200] <= 1310


def test_seeded_draws_are_reproducible():
    def draws(seed):
        sim = Simulator(faults=parse_faults("429:0.5"), rng=random.Random(seed))
        return [sim.next_fault() is None for _ in range(100)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_latency_is_applied(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("worker.providers.simulator.time.sleep", slept.append)
    provider = OfflineProvider(Simulator.from_spec(latency_ms=250, faults=""))
    text_call(provider)
    assert slept == [0.25]
