"""How long a worker's warm shutdown can take: the longest a running job can still hold a thread.

On SIGTERM Celery stops taking messages, hands back the ones it reserved and waits for the jobs
it is running. The Runner gives a job back to the queue at its next retry decision once the worker
is shutting down (worker/runner.py `SHUTTING_DOWN`), so after SIGTERM a job can at most finish the
inline sleep it is in, wait for a rate-limit slot and make one more provider call. An orchestrator's
grace period (compose `stop_grace_period`, Kubernetes `terminationGracePeriodSeconds`) must be at
least this long, or a killed job waits for the sweeper to find its expired lease.
tests/unit/test_compose.py holds docker-compose.yml to it.
"""

from __future__ import annotations

from models.settings import Settings

#: slack for the database writes around the call and for the process to exit
MARGIN_S = 30.0


def worst_case_after_sigterm_s(settings: Settings) -> float:
    """An inline retry sleep, then the longest rate-limit wait, then one call that times out."""
    return settings.retry_inline_max_s + settings.rate_limit_max_wait_s + settings.openai_timeout_s


def warm_shutdown_s(settings: Settings) -> float:
    """Seconds to allow a worker between SIGTERM and SIGKILL."""
    return worst_case_after_sigterm_s(settings) + MARGIN_S
