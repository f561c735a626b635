"""The seam between the Runner and a rate limiter: per-model request and token budgets.

`NoLimiter` lets every call through (tests, single workers). The Redis-backed limiter that
enforces RPM/TPM across all worker processes implements the same methods.
"""

from __future__ import annotations

from typing import Protocol


class Limiter(Protocol):
    def counts_tokens(self, model: str) -> bool:
        """Does `model` have a tokens-per-minute limit? Only then is a call's estimate needed
        (counting loads tiktoken's encodings: ~100 MiB per worker process)."""
        ...

    def acquire(self, model: str, tokens: int) -> float:
        """Block until one request of about `tokens` tokens may go to `model`; seconds waited."""
        ...

    def settle(self, model: str, *, estimated: int, used: int) -> None:
        """Correct the token charge made at `acquire` with what the call really used."""
        ...

    def on_rate_limited(self, model: str) -> None:
        """The provider answered 429: slow down for this model."""
        ...

    def on_success(self, model: str) -> None:
        """A call went through: the rate may recover."""
        ...


class NoLimiter:
    def counts_tokens(self, model: str) -> bool:
        return False

    def acquire(self, model: str, tokens: int) -> float:
        return 0.0

    def settle(self, model: str, *, estimated: int, used: int) -> None:
        return None

    def on_rate_limited(self, model: str) -> None:
        return None

    def on_success(self, model: str) -> None:
        return None
