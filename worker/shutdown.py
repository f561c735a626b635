"""How long a worker's warm shutdown can take: the longest one running job can still need.

On SIGTERM Celery stops taking messages, hands back the ones it reserved and waits for the jobs
it is running. A job killed halfway stays `running` until its lease is swept, so an orchestrator's
grace period (compose `stop_grace_period`, Kubernetes `terminationGracePeriodSeconds`) must be at
least this long. tests/unit/test_compose.py holds docker-compose.yml to it.
"""

from __future__ import annotations

from models.settings import Settings

#: slack for the database writes around the calls and for the process to exit
MARGIN_S = 30.0


def worst_case_job_s(settings: Settings) -> float:
    """Every attempt times out, and every wait between attempts is the longest allowed."""
    calls = settings.max_attempts * settings.openai_timeout_s
    waits = (settings.max_attempts - 1) * max(settings.retry_max_s, settings.retry_after_cap_s)
    return calls + waits


def warm_shutdown_s(settings: Settings) -> float:
    """Seconds to allow a worker between SIGTERM and SIGKILL."""
    return worst_case_job_s(settings) + MARGIN_S
