"""Pick the provider the settings ask for (`auto`: OpenAI with a key, else the simulator)."""

from __future__ import annotations

from models.catalogue import get_catalogue
from models.settings import Settings
from worker.providers.base import Provider
from worker.providers.offline import OfflineProvider
from worker.providers.simulator import Simulator


def build_provider(settings: Settings) -> Provider:
    if settings.effective_provider == "openai":
        from worker.image_fetch import ImageFetcher
        from worker.providers.openai_provider import OpenAIProvider  # the SDK is slow to import

        if settings.openai_api_key is None:
            raise SystemExit("genq: GENQ_PROVIDER=openai needs OPENAI_API_KEY")
        return OpenAIProvider(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout_s=settings.openai_timeout_s,
            stall_timeout_s=settings.stream_stall_timeout_s,
            catalogue=get_catalogue(settings.catalogue_path),
            images=ImageFetcher.from_settings(settings),
        )
    simulator = Simulator.from_spec(
        latency_ms=settings.offline_latency_ms,
        faults=settings.offline_faults,
        invalid_output=settings.offline_invalid_output,
        retry_after_s=settings.offline_retry_after_s,
        flagged_words=settings.offline_flagged_words,
    )
    return OfflineProvider(simulator, get_catalogue(settings.catalogue_path))
