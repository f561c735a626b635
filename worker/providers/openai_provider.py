"""The `openai` provider: the official SDK against OpenAI or any OpenAI-compatible base_url."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import openai
from openai._models import FinalRequestOptions
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from models.catalogue import Catalogue
from models.errors import PermanentProviderError, ProviderError, RetryableProviderError
from models.logging import redact
from models.moderation import Verdict, verdict_of
from models.pricing import Usage
from models.schemas import ImageParams, TextParams
from models.settings import Settings
from models.tokens import count_request, count_text
from worker.image_fetch import ImageFetcher
from worker.providers.base import ImageResult, OnDelta, StreamStopped, TextResult
from worker.providers.http_shards import sharded_http_client
from worker.providers.stream_chunks import ChunkFolder
from worker.retry import is_retryable_status

#: A text call's request options, built once: `post()` builds them with `model_construct`,
#: which deep-copies every default it is not given (the SDK's NOT_GIVEN sentinels, the
#: `security` dict), ~0.09 ms of CPU per call; a shallow copy with the body is ~0.01 ms. The
#: SDK copies options the same way before each try and replaces, never mutates, their fields.
_CHAT_OPTIONS = FinalRequestOptions.construct(method="post", url="/chat/completions")

#: DALL·E answers with URLs unless asked for base64; gpt-image-1 always returns base64
B64_BY_REQUEST = ("dall-e-2", "dall-e-3")


def _header_seconds(value: str, scale: float) -> float | None:
    """A delay in seconds from a number (scaled) or, for `retry-after`, an HTTP date."""
    try:
        seconds = float(value) / scale
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after`, if the provider sent a usable one."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        seconds = _header_seconds(value, scale) if value is not None else None
        if seconds is not None:
            return seconds
    return None


def translate_error(exc: openai.OpenAIError) -> ProviderError:
    """Map SDK exceptions onto genq's retryable / permanent split, with secrets masked."""
    if isinstance(exc, openai.APITimeoutError):
        return RetryableProviderError("model call timed out", kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableProviderError(
            f"connection error: {redact(str(exc))}", kind="connection_error"
        )
    if isinstance(exc, openai.APIStatusError):
        message = redact(getattr(exc, "message", "") or str(exc))
        if exc.status_code == 429 and getattr(exc, "code", None) == "insufficient_quota":
            # OpenAI's 429 for an exhausted quota or billing: no wait makes it pass
            return PermanentProviderError(message, status_code=429, kind="insufficient_quota")
        cls = (
            RetryableProviderError
            if is_retryable_status(exc.status_code)
            else PermanentProviderError
        )
        kind = "rate_limited" if exc.status_code == 429 else "provider_error"
        return cls(
            message,
            status_code=exc.status_code,
            retry_after_s=_retry_after(exc.response.headers),
            kind=kind,
        )
    return PermanentProviderError(redact(str(exc)))


class OpenAIProvider:
    """Calls OpenAI, or the OpenAI-compatible endpoint a catalogue entry names for its model."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout_s: float,
        catalogue: Catalogue | None = None,
        environ: Mapping[str, str] | None = None,
        images: ImageFetcher | None = None,
        stall_timeout_s: float = 30.0,
    ):
        self.timeout_s = timeout_s
        #: a streamed answer: the connection as usual, then at most this long between chunks
        self.stream_timeout = openai.Timeout(timeout_s, read=stall_timeout_s)
        #: turns each answer item (b64_json, a data: URL or a link to download) into stored bytes
        self.images = images or ImageFetcher.from_settings(Settings.model_construct())  # defaults
        self.catalogue = catalogue
        #: where per-model keys are read: the catalogue names the variable, not the secret
        self.environ = os.environ if environ is None else environ
        self.default = self._new_client(api_key, base_url)
        self._clients: dict[tuple[str, str | None], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def _new_client(self, api_key: str, base_url: str | None) -> openai.OpenAI:
        # max_retries=0: tenacity owns retrying, so a call is never retried twice over
        return openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=self.timeout_s,
            http_client=sharded_http_client(),
        )

    def client_for(self, model: str) -> openai.OpenAI:
        """The default client, or one for the model's own `base_url` and key variable."""
        spec = self.catalogue.get(model) if self.catalogue else None
        if spec is None or spec.base_url is None:
            return self.default
        route = (spec.base_url, spec.api_key_env)
        with self._lock:
            if route not in self._clients:
                key = self.environ.get(spec.api_key_env) if spec.api_key_env else None
                if spec.api_key_env and not key:
                    raise PermanentProviderError(
                        f"{spec.api_key_env} (the key for {model}) is not set", kind="config"
                    )
                self._clients[route] = self._new_client(key or self.default.api_key, spec.base_url)
            return self._clients[route]

    def generate_text(self, *, model: str, messages: list[dict], params: TextParams) -> TextResult:
        body = {"model": model, "messages": messages, **params.model_dump(exclude_none=True)}
        try:
            # The SDK's own request path (auth, headers, timeouts, errors) without `create()`'s
            # TypedDict transform of the arguments (it walks the typing annotations of every
            # message on every call, ~1.5 ms of CPU for a body that is already plain JSON), and
            # the answer as its parsed JSON (`cast_to=object`) instead of a ChatCompletion built
            # field by field: ~0.28 ms of CPU per call less (issue 17), and genq reads 6 fields.
            # The options are `_CHAT_OPTIONS` with this body, as `post()` would build them.
            options = _CHAT_OPTIONS.model_copy(update={"json_data": body})
            answer = self.client_for(model).request(object, options)
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        return text_result(answer)

    def generate_text_stream(
        self, *, model: str, messages: list[dict], params: TextParams, on_delta: OnDelta
    ) -> TextResult:
        """`stream: true` with `include_usage`, so the last chunk carries the exact usage."""
        body = {"model": model, "messages": messages, **params.model_dump(exclude_none=True)}
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        try:
            stream = self.client_for(model).post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=openai.Stream[ChatCompletionChunk],
                options={"timeout": self.stream_timeout},
            )
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        folder = ChunkFolder()

        def billed() -> Usage:
            return folder.usage or self._counted(model, messages, params, partial(folder))

        with stream:
            try:
                for chunk in stream:
                    if text := folder.add(chunk):
                        on_delta(text)
            except StreamStopped as stop:  # cancelled: billed the prompt and the text so far
                stop.usage = billed()
                raise
            except (openai.OpenAIError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise broken_stream(exc, billed()) from exc
        if folder.finish_reason is None:
            raise cut_short(billed())
        # a server that ignores include_usage (or a stream cut before its usage chunk): counted
        return replace(streamed_result(folder), usage=billed())

    def _counted(
        self, model: str, messages: list[dict], params: TextParams, result: TextResult
    ) -> Usage:
        spec = self.catalogue.get(model) if self.catalogue else None
        encoding_name = spec.encoding if spec else "o200k_base"
        answer = result.text + "".join(
            c["function"]["name"] + c["function"]["arguments"] for c in result.tool_calls or ()
        )
        return Usage(
            prompt_tokens=count_request(
                messages, params.model_dump(exclude_none=True), encoding_name
            ),
            completion_tokens=count_text(answer, encoding_name),
        )

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult:
        extra = {"response_format": "b64_json"} if model in B64_BY_REQUEST else {}
        if params.quality:
            extra["quality"] = params.quality
        try:
            response = self.client_for(model).images.generate(
                model=model, prompt=prompt, n=params.n, size=params.size, **extra
            )
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        items = response.data or []
        usage = _image_usage(response, len(items), params)
        try:
            images = [self.images.load(b64_json=i.b64_json, url=i.url) for i in items]
        except ProviderError as exc:
            exc.usage = usage  # the images were generated (and billed), just not deliverable
            raise
        if len(images) != params.n:
            raise PermanentProviderError(
                f"asked for {params.n} images, got {len(images)}", usage=usage
            )
        return ImageResult(images=images, usage=usage)

    def moderate(self, *, model: str, texts: list[str]) -> Verdict:
        """One `moderations.create` call over every text (one result each), on the default
        client (OPENAI_BASE_URL): moderation is OpenAI's endpoint, whichever model generates."""
        try:
            response = self.default.moderations.create(model=model, input=texts)
        except openai.OpenAIError as exc:
            raise translate_error(exc) from exc
        results = [
            (
                r.flagged,
                r.categories.model_dump(by_alias=True),
                r.category_scores.model_dump(by_alias=True),
            )
            for r in response.results
        ]
        return verdict_of(results, model=response.model or model)


def text_result(answer: dict) -> TextResult:
    """A chat completion's JSON as genq's result; absent or null fields read as the SDK's
    unvalidated model reads them (None, then genq's defaults)."""
    usage = answer.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    choice = answer["choices"][0]
    message = choice.get("message") or {}
    calls = message.get("tool_calls")
    return TextResult(
        text=message.get("content") or "",
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            cached_tokens=details.get("cached_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
        ),
        finish_reason=choice.get("finish_reason"),
        tool_calls=[_tool_call(c) for c in calls] if calls else None,
    )


def _tool_call(call: dict) -> dict:
    """A tool call as the model returned it, in the contract's shape (function tools only)."""
    function = call.get("function") or {}
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {
            "name": function.get("name") or "",
            "arguments": function.get("arguments") or "",
        },
    }


def _image_usage(response, count: int, params: ImageParams) -> Usage:
    """Token-billed image models (gpt-image-1) report usage; DALL-E bills per image."""
    usage = getattr(response, "usage", None)
    return Usage(
        prompt_tokens=(getattr(usage, "input_tokens", 0) or 0) if usage else 0,
        completion_tokens=(getattr(usage, "output_tokens", 0) or 0) if usage else 0,
        images=count,
        size=params.size,
        quality=params.quality,
    )


def broken_stream(exc: Exception, usage: Usage) -> RetryableProviderError:
    """A stream that broke after it started (a drop, a stall, an error event, a chunk that is
    not a chunk) is a retryable attempt, billed `usage`: what the provider reported, or (as it
    usually sent none: the usage comes last) the prompt and the text received, counted."""
    if isinstance(exc, openai.APITimeoutError):
        reason, kind = "the model's stream stalled", "timeout"
    elif isinstance(exc, openai.APIConnectionError):
        reason, kind = "the model's stream was cut off", "stream_broken"
    elif isinstance(exc, openai.APIError):
        reason, kind = f"the model's stream sent an error: {redact(exc.message)}", "stream_broken"
    else:
        reason, kind = (
            f"the model's stream sent a malformed chunk ({type(exc).__name__})",
            ("stream_broken"),
        )
    return RetryableProviderError(reason, kind=kind, usage=usage)


def cut_short(usage: Usage) -> RetryableProviderError:
    """A stream that ended without a finish reason was truncated: retryable, billed `usage`."""
    return RetryableProviderError(
        "the model's stream ended before its last chunk", kind="stream_broken", usage=usage
    )


def partial(folder: ChunkFolder) -> TextResult:
    """What came so far, as a result to count (tool calls' pieces included)."""
    return TextResult(text=folder.full_text, usage=Usage(), tool_calls=folder.tool_calls())


def streamed_result(folder: ChunkFolder) -> TextResult:
    """The whole answer of a stream that came to its finish reason."""
    return TextResult(
        text=folder.full_text,
        usage=folder.usage or Usage(),
        finish_reason=folder.finish_reason,
        tool_calls=folder.tool_calls(),
    )
