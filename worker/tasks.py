"""Celery tasks: thin wrappers that hand a job id to the Runner."""

from __future__ import annotations

from functools import lru_cache

import structlog
from celery.signals import setup_logging, worker_ready

from models.catalogue import get_catalogue
from models.db import get_engine
from models.logging import configure_logging
from models.settings import get_settings
from models.tokens import install_encodings
from worker.celery_app import celery_app
from worker.observe import run_observed
from worker.providers.factory import build_provider
from worker.retry import RetryPolicy
from worker.runner import Runner

log = structlog.get_logger("genq.worker")


@lru_cache
def get_runner() -> Runner:
    """One Runner per worker process, shared by its threads."""
    settings = get_settings()
    install_encodings(settings.tiktoken_cache_dir)
    return Runner(
        engine=get_engine(settings.database_url),
        provider=build_provider(settings),
        catalogue=get_catalogue(settings.catalogue_path),
        retry=RetryPolicy.from_settings(settings),
        lease_s=settings.lease_s,
    )


@setup_logging.connect
def _logging(**_kwargs) -> None:
    """Connecting here tells Celery to leave logging to genq's structlog set-up."""
    configure_logging(get_settings())


@worker_ready.connect
def _announce(**_kwargs) -> None:
    runner = get_runner()
    if runner.provider.name == "offline":
        log.warning(
            "provider.offline",
            message="OFFLINE SIMULATOR in use: outputs are synthetic "
            "(set OPENAI_API_KEY or GENQ_PROVIDER=openai for real models)",
        )
    else:
        log.info("provider.ready", provider=runner.provider.name)


@celery_app.task(name="genq.generate_text", bind=True)
def generate_text(self, job_id: str) -> str:
    """Generate the text for one queued job."""
    return run_observed(self, job_id, get_runner())


@celery_app.task(name="genq.generate_image", bind=True)
def generate_image(self, job_id: str) -> str:
    """Generate the images for one queued job."""
    return run_observed(self, job_id, get_runner())
