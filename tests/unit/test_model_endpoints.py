"""A catalogue entry with its own base_url and key variable is one OpenAI-compatible model."""

from __future__ import annotations

import pytest

from models.catalogue import load_catalogue
from models.errors import PermanentProviderError
from worker.providers.openai_provider import OpenAIProvider

EXTRA = """
[models."house-llm"]
kind = "text"
tier = "economy"
context_window = 8192
max_output_tokens = 1024
input_per_1m = 0.05
output_per_1m = 0.10
base_url = "http://127.0.0.1:9999/v1"
api_key_env = "HOUSE_LLM_KEY"
"""


@pytest.fixture
def provider(tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text(EXTRA)
    return lambda environ: OpenAIProvider(
        api_key="sk-default",
        base_url="http://127.0.0.1:8888/v1",
        timeout_s=5,
        catalogue=load_catalogue(path),
        environ=environ,
    )


def test_catalogued_models_use_the_default_endpoint(provider):
    sdk = provider({})
    assert sdk.client_for("gpt-4o-mini") is sdk.default
    assert str(sdk.default.base_url).startswith("http://127.0.0.1:8888/v1")


def test_a_model_with_its_own_endpoint_gets_its_own_client_and_key(provider):
    sdk = provider({"HOUSE_LLM_KEY": "house-secret"})
    client = sdk.client_for("house-llm")
    assert client is not sdk.default and client is sdk.client_for("house-llm")
    assert str(client.base_url).startswith("http://127.0.0.1:9999/v1")
    assert client.api_key == "house-secret" and client.max_retries == 0


def test_a_missing_key_variable_fails_the_job_clearly(provider):
    with pytest.raises(PermanentProviderError, match="HOUSE_LLM_KEY"):
        provider({}).client_for("house-llm")


def test_the_endpoint_and_key_variable_are_not_shown_by_the_models_route(tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text(EXTRA)
    public = load_catalogue(path).get("house-llm").public()
    assert "base_url" not in public and "api_key_env" not in public
    assert public["capabilities"] == ["text"]
