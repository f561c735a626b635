"""models/settings.py: defaults, the GENQ_ environment, validation and the one-line exit."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest
from pydantic import ValidationError

from models.settings import Settings, describe_error, get_settings, parse_faults


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No GENQ_/OPENAI_ variable from the outer shell and no `.env` file in the working dir."""
    for name in list(os.environ):
        if name.startswith(("GENQ_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# -- defaults and sources ---------------------------------------------------------------------


def test_defaults_match_the_design():
    # Given an empty environment
    # When settings are read
    settings = Settings()
    # Then every documented default applies
    assert settings.database_url == "sqlite:///./genq.db"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.provider == "auto"
    assert settings.openai_api_key is None
    assert settings.openai_base_url is None
    assert settings.offline_latency_ms == 0
    assert settings.offline_faults == ""
    assert settings.default_tier == "balanced"
    assert settings.catalogue_path is None
    assert settings.max_attempts == 4
    assert settings.retry_initial_s == 0.5
    assert settings.retry_max_s == 20.0
    assert settings.retry_after_cap_s == 60.0
    assert settings.log_level == "INFO"
    assert settings.log_format == "json"
    assert settings.effective_provider == "offline"


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("GENQ_DATABASE_URL", "postgresql+psycopg://u@db/genq", "database_url", None),
        ("GENQ_REDIS_URL", "rediss://cache:6380/1", "redis_url", None),
        ("GENQ_PROVIDER", "offline", "provider", None),
        ("GENQ_OFFLINE_LATENCY_MS", "200", "offline_latency_ms", 200),
        ("GENQ_OFFLINE_FAULTS", "429:0.3,500:0.1", "offline_faults", None),
        ("GENQ_MAX_ATTEMPTS", "7", "max_attempts", 7),
        ("GENQ_RETRY_AFTER_CAP_S", "5.5", "retry_after_cap_s", 5.5),
        ("GENQ_LOG_LEVEL", "DEBUG", "log_level", None),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9000/v1", "openai_base_url", None),
    ],
)
def test_environment_with_genq_prefix_is_read(monkeypatch, variable, value, field, expected):
    # Given one variable in the environment
    monkeypatch.setenv(variable, value)
    # When settings are read
    settings = Settings()
    # Then the field carries the (converted) value
    assert getattr(settings, field) == (value if expected is None else expected)


def test_unprefixed_variable_is_ignored(monkeypatch):
    # Given DATABASE_URL without the GENQ_ prefix
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://elsewhere/db")
    # When settings are read
    # Then the default stays
    assert Settings().database_url == "sqlite:///./genq.db"


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "GENQ_OPENAI_API_KEY"])
def test_openai_key_is_read_with_or_without_prefix(monkeypatch, variable):
    monkeypatch.setenv(variable, "sk-test-123456")
    key = Settings().openai_api_key
    assert key is not None
    assert key.get_secret_value() == "sk-test-123456"
    assert "sk-test" not in repr(Settings())


def test_dotenv_file_is_read_and_environment_wins(monkeypatch, tmp_path):
    # Given a .env in the working directory and one variable also set in the environment
    (tmp_path / ".env").write_text("GENQ_MAX_ATTEMPTS=9\nGENQ_LOG_FORMAT=console\n")
    monkeypatch.setenv("GENQ_LOG_FORMAT", "json")
    # When settings are read
    settings = Settings()
    # Then the file fills in, the environment overrides
    assert settings.max_attempts == 9
    assert settings.log_format == "json"


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"database_url": "mysql://root@db/genq"}, "database_url"),
        ({"database_url": "genq.db"}, "database_url"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"redis_url": "127.0.0.1:6379"}, "redis_url"),
        ({"offline_faults": "429:1.5"}, "offline_faults"),
        ({"offline_faults": "200:0.1"}, "offline_faults"),
        ({"offline_faults": "429:0.7,500:0.7"}, "offline_faults"),
        ({"offline_faults": "lots of errors"}, "offline_faults"),
        ({"provider": "azure"}, "provider"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"offline_latency_ms": -1}, "offline_latency_ms"),
        ({"offline_invalid_output": 1.5}, "offline_invalid_output"),
        ({"offline_invalid_output": -0.1}, "offline_invalid_output"),
        ({"offline_invalid_output": "often"}, "offline_invalid_output"),
        ({"retry_initial_s": -0.1}, "retry_initial_s"),
        ({"lease_s": 2}, "lease_s"),
        ({"worker_gc_threshold": -1}, "worker_gc_threshold"),
        ({"worker_gc_threshold": "often"}, "worker_gc_threshold"),
        ({"worker_fetch_batch": 0}, "worker_fetch_batch"),
        ({"worker_fetch_batch": 1001}, "worker_fetch_batch"),
        ({"log_level": "TRACE"}, "log_level"),
    ],
)
def test_bad_value_is_a_validation_error_naming_the_variable(kwargs, field):
    # Given a bad value
    # When settings are built
    with pytest.raises(ValidationError) as info:
        Settings(**kwargs)
    # Then the error is on that field, and the one-liner names its GENQ_ variable
    assert info.value.errors()[0]["loc"] == (field,)
    line = describe_error(info.value)
    assert f"GENQ_{field.upper()}" in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("[models\n", "Expected ']'"),
        ('[models."gpt-x"]\nkind = "text"\n', "line 1: model 'gpt-x': tier: Field required"),
    ],
    ids=["missing file", "bad TOML", "invalid entry"],
)
def test_a_broken_catalogue_is_an_invalid_setting(tmp_path, content, reason):
    # Given GENQ_CATALOGUE_PATH naming a file that is missing, not TOML, or has a bad entry
    path = tmp_path / "catalogue.toml"
    if content is not None:
        path.write_text(content)
    # When settings are built, Then it is refused like any other bad value: one line
    with pytest.raises(ValidationError) as info:
        Settings(catalogue_path=path)
    line = describe_error(info.value)
    assert line.startswith(f"invalid setting GENQ_CATALOGUE_PATH: {path}")
    assert reason in line and "\n" not in line


def test_a_valid_catalogue_file_is_read_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text(
        '[models."my-model"]\nkind = "text"\ntier = "economy"\n'
        "context_window = 8000\nmax_output_tokens = 1000\n"
    )
    monkeypatch.setenv("GENQ_CATALOGUE_PATH", str(path))
    assert Settings().catalogue_path == path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("https://genq.example.com/v1/", "https://genq.example.com"),
        ("https://example.com/genq/v1", "https://example.com/genq"),
    ],
)
def test_the_api_url_is_the_api_root_with_or_without_v1(value, expected):
    assert Settings(api_url=value).api_url == expected


def test_an_api_url_without_a_scheme_is_refused():
    with pytest.raises(ValidationError) as info:
        Settings(api_url="127.0.0.1:8000")
    assert describe_error(info.value) == (
        "invalid setting GENQ_API_URL: must be an http:// or https:// URL"
    )


@pytest.mark.parametrize(("value", "expected"), [("", None), ("  ", None), (" genq_k\n", "genq_k")])
def test_a_blank_api_key_counts_as_unset(monkeypatch, value, expected):
    monkeypatch.setenv("GENQ_API_KEY", value)
    key = Settings().api_key
    assert (None if key is None else key.get_secret_value()) == expected


# -- parse_faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {}),
        ("429:0.3,500:0.1", {429: Decimal("0.3"), 500: Decimal("0.1")}),
        (" 429:0.3 , 503:0.2 ", {429: Decimal("0.3"), 503: Decimal("0.2")}),
        ("500:1", {500: Decimal(1)}),
        ("400:0.5,429:0.5", {400: Decimal("0.5"), 429: Decimal("0.5")}),
        ("599:0", {599: Decimal(0)}),
        ("429:0.3,", {429: Decimal("0.3")}),
    ],
)
def test_parse_faults_accepts(spec, expected):
    assert parse_faults(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("200:0.1", "400-599"),
        ("399:0.1", "400-599"),
        ("600:0.1", "400-599"),
        ("429:1.01", "0..1"),
        ("429:-0.1", "0..1"),
        ("429:inf", "0..1"),
        ("429:0.6,500:0.5", "more than 1"),
        ("429", "STATUS:PROBABILITY"),
        ("429:", "STATUS:PROBABILITY"),
        ("abc:0.1", "STATUS:PROBABILITY"),
        ("429:half", "STATUS:PROBABILITY"),
        ("lots of errors", "STATUS:PROBABILITY"),
    ],
)
def test_parse_faults_rejects(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_faults(spec)


@pytest.mark.parametrize("spec", ["429:nan", "429:sNaN"])
def test_parse_faults_rejects_nan_with_value_error(spec):
    with pytest.raises(ValueError):
        parse_faults(spec)


# -- get_settings -----------------------------------------------------------------------------


def test_get_settings_is_cached():
    assert get_settings() is get_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GENQ_REDIS_URL", "http://127.0.0.1:6379"),
        ("GENQ_DATABASE_URL", "mysql://root@db/genq"),
        ("GENQ_MAX_ATTEMPTS", "zero"),
        ("GENQ_OFFLINE_FAULTS", "429:2"),
    ],
)
def test_get_settings_exits_with_one_line_naming_the_variable(monkeypatch, capsys, variable, value):
    # Given one invalid variable in the environment
    monkeypatch.setenv(variable, value)
    # When the process reads its settings
    with pytest.raises(SystemExit) as info:
        get_settings()
    # Then it exits with status 2 and one stderr line that names the variable, no traceback
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert variable in err
    assert "Traceback" not in err


def test_get_settings_exits_cleanly_on_nan_fault_probability(monkeypatch, capsys):
    monkeypatch.setenv("GENQ_OFFLINE_FAULTS", "429:nan")
    with pytest.raises(SystemExit) as info:
        get_settings()
    assert info.value.code == 2
    assert "GENQ_OFFLINE_FAULTS" in capsys.readouterr().err


# -- effective_provider -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "api_key", "expected"),
    [
        (None, None, "offline"),
        (None, "sk-test-123456", "openai"),
        (None, "", "offline"),
        ("auto", "sk-test-123456", "openai"),
        ("offline", "sk-test-123456", "offline"),
        ("openai", None, "openai"),
    ],
)
def test_effective_provider(monkeypatch, provider, api_key, expected):
    # Given GENQ_PROVIDER and OPENAI_API_KEY (unset when None)
    if provider is not None:
        monkeypatch.setenv("GENQ_PROVIDER", provider)
    if api_key is not None:
        monkeypatch.setenv("OPENAI_API_KEY", api_key)
    # When settings are read
    # Then auto resolves by the key's presence, explicit choices stay
    assert Settings().effective_provider == expected


def test_a_status_listed_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        parse_faults("429:0.1,429:0.2")
