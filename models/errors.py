"""The one tree of genq errors; the API maps them to problem+json in a single handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.pricing import Usage


class GenqError(Exception):
    """Base of every error genq raises on purpose."""

    status = 500
    title = "Internal error"
    type = "about:blank"

    def __init__(self, detail: str, *, errors: list[dict] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class CatalogueError(GenqError):
    """The model catalogue file is broken; genq refuses to start."""

    title = "Invalid model catalogue"


class InvalidRequest(GenqError):
    """The request is well-formed JSON but asks for something genq cannot do."""

    status = 422
    title = "Invalid request"
    type = "https://genq.dev/problems/invalid-request"


class UnparseableBody(GenqError):
    """The body could not be parsed at all (e.g. a broken multipart form)."""

    status = 400
    title = "Bad request"
    type = "https://genq.dev/problems/unparseable-body"


class Unauthorized(GenqError):
    status = 401
    title = "Unauthorized"
    type = "https://genq.dev/problems/unauthorized"


class JobNotFound(GenqError):
    status = 404
    title = "Job not found"
    type = "https://genq.dev/problems/not-found"


class ConversationNotFound(GenqError):
    status = 404
    title = "Conversation not found"
    type = "https://genq.dev/problems/not-found"


class FileNotFound(GenqError):
    status = 404
    title = "File not found"
    type = "https://genq.dev/problems/not-found"


class BatchNotFound(GenqError):
    status = 404
    title = "Batch not found"
    type = "https://genq.dev/problems/not-found"


class Conflict(GenqError):
    status = 409
    title = "Conflict"
    type = "https://genq.dev/problems/conflict"


class IdempotencyConflict(Conflict):
    """An Idempotency-Key reused with a request other than the one it was first used for."""

    title = "Idempotency-Key reused"
    type = "https://genq.dev/problems/idempotency-key-reused"


class BudgetExceeded(GenqError):
    status = 402
    title = "Budget exhausted"
    type = "https://genq.dev/problems/budget-exhausted"


class PayloadTooLarge(GenqError):
    status = 413
    title = "Request body too large"
    type = "https://genq.dev/problems/payload-too-large"


class NotReady(GenqError):
    status = 503
    title = "Service not ready"
    type = "https://genq.dev/problems/not-ready"


class TooManyStreams(GenqError):
    """The key holds GENQ_MAX_STREAMS_PER_KEY open event streams already."""

    status = 429
    title = "Too many open event streams"
    type = "https://genq.dev/problems/too-many-streams"
    #: a slot frees when one of the key's streams ends
    retry_after_s = 5


class EventsUnavailable(NotReady):
    """Redis, which holds the jobs' events, does not answer."""

    retry_after_s = 5


class ProviderError(GenqError):
    """A model call failed. `status_code` is the provider's HTTP status when there was one;
    `usage` is what the call billed when it failed after the provider did the work (an image
    generated but not downloadable)."""

    retryable = False

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        kind: str = "provider_error",
        usage: Usage | None = None,
    ):
        # a provider's message may quote the request back, NUL included: stored in text columns
        super().__init__(detail.replace("\x00", "\ufffd"))
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.kind = kind
        self.usage = usage


class RetryableProviderError(ProviderError):
    """429, 5xx, timeouts and connection errors: worth another attempt."""

    retryable = True


class PermanentProviderError(ProviderError):
    """Any other 4xx: retrying would fail the same way and cost money."""
