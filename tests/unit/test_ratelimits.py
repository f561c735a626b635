"""Rate limits as data: GENQ_RATE_LIMITS parsing, catalogue rpm/tpm, and which one wins."""

from __future__ import annotations

import os
import textwrap

import pytest
from pydantic import ValidationError

from models.catalogue import load_catalogue
from models.errors import CatalogueError
from models.ratelimits import RateLimit, parse_rate_limits, resolve_limits
from models.settings import Settings, describe_error


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No GENQ_ variable from the outer shell and no `.env` file in the working directory."""
    for name in list(os.environ):
        if name.startswith(("GENQ_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("gpt-4o-mini=120rpm", {"gpt-4o-mini": RateLimit(rpm=120)}),
        (
            "gpt-4o-mini=120rpm/200000tpm,dall-e-3=5rpm",
            {"gpt-4o-mini": RateLimit(rpm=120, tpm=200000), "dall-e-3": RateLimit(rpm=5)},
        ),
        (" gpt-4o = 30000TPM / 500RPM , ", {"gpt-4o": RateLimit(rpm=500, tpm=30000)}),
        ("org/llama-3.1:8b=10rpm", {"org/llama-3.1:8b": RateLimit(rpm=10)}),
    ],
)
def test_parse_rate_limits_accepts(spec, expected):
    assert parse_rate_limits(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt-4o-mini", "is not MODEL=LIMITS"),
        ("=120rpm", "is not MODEL=LIMITS"),
        ("gpt-4o-mini=", "is not MODEL=LIMITS"),
        ("gpt-4o-mini=120", "must look like 120rpm"),
        ("gpt-4o-mini=0rpm", "must look like 120rpm"),
        ("gpt-4o-mini=-5rpm", "must look like 120rpm"),
        ("gpt-4o-mini=120rps", "must look like 120rpm"),
        ("gpt-4o-mini=1.5rpm", "must look like 120rpm"),
        ("gpt-4o-mini=120rpm/", "must look like 120rpm"),
        ("gpt-4o-mini=120rpm/60rpm", "rpm is given twice"),
        ("gpt-4o=1rpm,gpt-4o=2rpm", "listed twice"),
    ],
)
def test_parse_rate_limits_rejects_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_rate_limits(spec)


def test_bad_setting_stops_with_one_line_naming_the_variable(monkeypatch):
    # Given a malformed GENQ_RATE_LIMITS
    monkeypatch.setenv("GENQ_RATE_LIMITS", "gpt-4o-mini=lots")
    # When settings are read
    with pytest.raises(ValidationError) as info:
        Settings()
    # Then the one-liner names the variable and says what is wrong
    line = describe_error(info.value)
    assert line.startswith("invalid setting GENQ_RATE_LIMITS: ")
    assert "120rpm" in line and "\n" not in line


def test_settings_defaults_are_unlimited_with_a_bounded_wait():
    settings = Settings(_env_file=None)
    assert settings.rate_limits == ""
    assert settings.rate_limit_max_wait_s == 60.0


def _catalogue_with(tmp_path, body: str):
    path = tmp_path / "extra.toml"
    path.write_text(textwrap.dedent(body))
    return load_catalogue(path)


def test_catalogue_limits_with_settings_overriding_per_dimension(tmp_path):
    # Given a catalogue giving gpt-4o-mini 500 RPM and 200k TPM, and house-llm 60 RPM
    catalogue = _catalogue_with(
        tmp_path,
        """
        [models."gpt-4o-mini"]
        kind = "text"
        tier = "economy"
        context_window = 128000
        max_output_tokens = 16384
        rpm = 500
        tpm = 200000
        [models."house-llm"]
        kind = "text"
        tier = "economy"
        context_window = 8192
        max_output_tokens = 1024
        rpm = 60
        """,
    )
    # When the settings lower gpt-4o-mini's RPM only, and limit dall-e-3
    limits = resolve_limits(catalogue, parse_rate_limits("gpt-4o-mini=120rpm,dall-e-3=5rpm"))
    # Then the settings win where they speak, the catalogue elsewhere, unlimited models are absent
    assert limits == {
        "gpt-4o-mini": RateLimit(rpm=120, tpm=200000),
        "house-llm": RateLimit(rpm=60),
        "dall-e-3": RateLimit(rpm=5),
    }


def test_builtin_catalogue_sets_no_limit():
    """OpenAI's limits depend on the account's usage tier: the operator states them."""
    assert resolve_limits(load_catalogue(), {}) == {}


def test_catalogue_limit_must_be_positive(tmp_path):
    with pytest.raises(CatalogueError, match="rpm"):
        _catalogue_with(
            tmp_path,
            """
            [models."x"]
            kind = "text"
            tier = "economy"
            context_window = 100
            max_output_tokens = 10
            rpm = 0
            """,
        )
