"""genq settings: one pydantic-settings object, read from `GENQ_*` variables and a `.env` file."""

from __future__ import annotations

import sys
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.catalogue import get_catalogue
from models.errors import CatalogueError
from models.moderation import parse_flagged_words
from models.ratelimits import parse_rate_limits
from models.schemas import MAX_CACHE_TTL_S


class Settings(BaseSettings):
    """Everything genq reads from its environment, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="GENQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "sqlite:///./genq.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    provider: Literal["auto", "openai", "offline"] = "auto"

    # The OpenAI SDK's own variables, read without the GENQ_ prefix.
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "GENQ_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "GENQ_OPENAI_BASE_URL")
    )
    openai_timeout_s: float = Field(default=60.0, gt=0)

    offline_latency_ms: int = Field(default=0, ge=0, le=600_000)
    offline_faults: str = ""
    #: probability that the simulator answers a JSON-format request with invalid JSON
    offline_invalid_output: float = Field(default=0.0, ge=0, le=1)
    #: the Retry-After the simulator sends with its 429s
    offline_retry_after_s: float = Field(default=1.0, ge=0, le=3600)

    #: stand-in moderation: text containing one of these words (`WORD` or `WORD:CATEGORY`,
    #: comma-separated, case-insensitive whole words) is flagged, and the verdict says synthetic
    offline_flagged_words: str = ""

    default_tier: Literal["economy", "balanced", "premium"] = "balanced"
    # Moderation (README "Moderation"): the default mode of jobs and keys that set none.
    moderation: Literal["off", "flag", "block"] = "off"
    moderation_model: str = Field(default="omni-moderation-latest", min_length=1)
    #: a moderation outage: fail the job or go on; unset = fail for block, allow for flag
    moderation_on_error: Literal["fail", "allow"] | None = None
    catalogue_path: Path | None = None

    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_initial_s: float = Field(default=0.5, ge=0)
    retry_max_s: float = Field(default=20.0, ge=0)
    retry_after_cap_s: float = Field(default=60.0, ge=0)

    worker_concurrency: int = Field(default=8, ge=1, le=2000)
    #: the cyclic garbage collector's first threshold in workers (worker/collector.py);
    #: 0 keeps Python's own (700, 10, 10) and freezes nothing
    worker_gc_threshold: int = Field(default=50_000, ge=0, le=10_000_000)
    #: the most queued messages a worker takes per Redis round trip, within its prefetch limit
    #: (models/redis_transport.py); 1 is kombu's one message per `BRPOP`
    worker_fetch_batch: int = Field(default=16, ge=1, le=1000)
    #: Celery task events: what Flower's task list and task pages are built from
    task_events: bool = True
    #: PostgreSQL: SQLAlchemy's pre-ping (a `SELECT 1` per checkout) on top of the socket check
    db_pre_ping: bool = False
    # Fault tolerance (README "Guarantees"): leases, the sweeper, deadlines, fallbacks.
    lease_s: int = Field(default=60, ge=3)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    redispatch_after_s: int = Field(default=300, ge=1)
    visibility_timeout_s: int = Field(default=3600, ge=60)
    job_deadline_s: int = Field(default=3600, ge=1)
    max_job_deadline_s: int = Field(default=86400, ge=1)
    retry_inline_max_s: float = Field(default=5.0, ge=0)
    fallback_after: int = Field(default=2, ge=1)
    cooldown_failures: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    # Global rate limits (README "Rate limits"): `MODEL=120rpm/200000tpm,…` over the catalogue's.
    rate_limits: str = ""
    rate_limit_max_wait_s: float = Field(default=60.0, ge=0)
    #: answer a repeated request from a succeeded job this many seconds old at most (0: off);
    #: a job's `policy.cache_ttl_s` overrides it (README "Response cache")
    cache_ttl_s: int = Field(default=0, ge=0, le=MAX_CACHE_TTL_S)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: a refused body is read and thrown away up to this much, so the 413 reaches the client
    body_drain_bytes: int = Field(default=134_217_728, ge=0)
    body_drain_timeout_s: float = Field(default=30.0, gt=0)
    # OpenAI-compatible Files and Batches (README "Files and batches").
    #: where uploaded and output files live (one file per id); created when missing
    files_dir: Path = Path("./genq-files")
    #: the largest file `POST /v1/files` takes (OpenAI's batch input limit: 200 MB)
    max_file_bytes: int = Field(default=209_715_200, ge=1024)
    #: requests one batch input file may hold (OpenAI's limit)
    batch_max_lines: int = Field(default=50_000, ge=1)
    #: a batch's completion window (`24h`): past it, its unfinished lines are cancelled and the
    #: batch becomes `expired`; shorten it to test expiry, or to bound how long a batch may run
    batch_completion_window_s: int = Field(default=86_400, ge=1)
    # Image answers given as links (README "Image answers"): the worker downloads them at once.
    image_download_max_bytes: int = Field(default=33_554_432, ge=1024)
    image_download_timeout_s: float = Field(default=30.0, gt=0)
    image_url_schemes: str = "https"
    # Webhooks (README "Webhooks"): deliveries of job ends, signed, retried, SSRF-guarded.
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    #: the longest one delivery holds a connection (connect, send, answer: all of it)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=10)
    webhook_retry_base_s: float = Field(default=5.0, ge=0)
    webhook_retry_max_s: float = Field(default=3600.0, ge=0)
    webhook_allow_private: bool = False
    #: deliveries in flight at once in one worker process (they wait on the network, not a thread)
    webhook_concurrency: int = Field(default=64, ge=1, le=10_000)
    # Streaming (README "Streaming"): a stream job's events in a Redis Stream, read over SSE.
    #: entries kept per job's stream (XADD MAXLEN ~): deltas are batched, so ~20 a second
    stream_max_events: int = Field(default=20_000, ge=100)
    #: a job's stream expires this long after its last event (late subscribers replay it)
    stream_ttl_s: int = Field(default=3600, ge=10)
    #: a provider stream silent this long is broken: a retryable attempt
    stream_stall_timeout_s: float = Field(default=30.0, gt=0)
    #: deltas are sent to Redis at most this often per job (and on every 1024 characters)
    stream_flush_ms: int = Field(default=50, ge=0, le=5000)
    #: how often a silent event stream re-reads the job from the database
    sse_poll_s: float = Field(default=1.0, gt=0, le=15)
    #: keep-alive comments on an event stream at least this often
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=15)
    max_streams_per_key: int = Field(default=100, ge=1)
    #: an API process serves a key it verified from memory for this long (api/key_cache.py):
    #: a revoked key still works there for up to this many seconds; 0 = read it every request
    auth_cache_s: float = Field(default=5.0, ge=0, le=60)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Used by the `genq submit` / `genq status` client commands.
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    tiktoken_cache_dir: Path = Path.home() / ".cache" / "genq" / "tiktoken"
    # Operations (docs/operations.md): Flower's login, prompt logging, the worker metrics endpoint.
    flower_basic_auth: SecretStr | None = None
    log_prompts: bool = False
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("offline_faults")
    @classmethod
    def _faults_parse(cls, value: str) -> str:
        parse_faults(value)
        return value

    @field_validator("offline_flagged_words")
    @classmethod
    def _flagged_words_parse(cls, value: str) -> str:
        parse_flagged_words(value)
        return value

    @field_validator("moderation_on_error", mode="before")
    @classmethod
    def _blank_on_error_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @field_validator("image_url_schemes")
    @classmethod
    def _schemes_parse(cls, value: str) -> str:
        parse_schemes(value)
        return value

    @field_validator("catalogue_path")
    @classmethod
    def _catalogue_loads(cls, value: Path | None) -> Path | None:
        """A broken catalogue stops every process at start-up, not each job that needs it."""
        if value is not None:
            try:
                get_catalogue(value)
            except CatalogueError as exc:
                raise ValueError(exc.detail) from None
        return value

    @field_validator("api_url")
    @classmethod
    def _api_root(cls, value: str) -> str:
        """The API's root: `http://host:8000/v1` (the SDKs' base URL) means `http://host:8000`."""
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/").removesuffix("/v1")

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty GENQ_API_KEY counts as unset (the commands then say how to get one)."""
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not (user and sep and password) or "," in user + password:
                raise ValueError("must be user:password (no comma)")
        return value

    @property
    def effective_provider(self) -> Literal["openai", "offline"]:
        """`auto` means OpenAI when a key is configured, else the offline simulator."""
        if self.provider == "auto":
            return "openai" if self.openai_api_key else "offline"
        return self.provider


def parse_faults(spec: str) -> dict[int, Decimal]:
    """Parse `429:0.3,500:0.1` into {status: probability}; total probability must stay ≤ 1."""
    faults: dict[int, Decimal] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        status, sep, prob = part.partition(":")
        try:
            code, p = int(status), Decimal(prob)
        except (ValueError, ArithmeticError):
            raise ValueError(f"{part!r} is not STATUS:PROBABILITY") from None
        if not sep or not 400 <= code <= 599 or not p.is_finite() or not 0 <= p <= 1:
            raise ValueError(f"{part!r}: status must be 400-599 and probability 0..1")
        if code in faults:
            raise ValueError(f"status {code} is listed twice")
        faults[code] = p
    if sum(faults.values(), Decimal(0)) > 1:
        raise ValueError("fault probabilities add up to more than 1")
    return faults


def parse_schemes(spec: str) -> frozenset[str]:
    """`https,http` → {"https", "http"}: the URL schemes image links may use (at least one)."""
    schemes = frozenset(p.strip().lower() for p in spec.split(",") if p.strip())
    if not schemes or not schemes <= {"http", "https"}:
        raise ValueError("must be https, http or https,http")
    return schemes


def describe_error(exc: ValidationError) -> str:
    """One line naming the first bad variable, e.g. `GENQ_MAX_ATTEMPTS: must be ≥ 1`."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "settings"
    name = field.upper() if field.startswith(("OPENAI_", "GENQ_")) else f"GENQ_{field.upper()}"
    return f"invalid setting {name}: {err['msg'].removeprefix('Value error, ')}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; exits with one clear line when they are invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"genq: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
