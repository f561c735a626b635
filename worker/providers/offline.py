"""The `offline` provider: the simulator called in-process, with no network and no key."""

from __future__ import annotations

import time

from models.catalogue import Catalogue
from models.errors import PermanentProviderError, RetryableProviderError
from models.moderation import Verdict, verdict_of
from models.pricing import Usage
from models.schemas import ImageParams, TextParams
from models.tokens import count_text
from worker.providers.base import (
    GeneratedImage,
    ImageResult,
    OnDelta,
    StreamStopped,
    TextResult,
    parse_size,
)
from worker.providers.simulator import Simulator, draw_png, image_usage, text_pieces
from worker.retry import is_retryable_status


class OfflineProvider:
    name = "offline"

    def __init__(self, simulator: Simulator, catalogue: Catalogue | None = None):
        self.simulator = simulator
        self.catalogue = catalogue

    def _maybe_fail(self, *, wait: bool = True) -> None:
        if wait:
            self.simulator.wait()
        fault = self.simulator.next_fault()
        if fault is None:
            return
        error = (
            RetryableProviderError if is_retryable_status(fault.status) else PermanentProviderError
        )
        raise error(
            fault.message,
            status_code=fault.status,
            retry_after_s=fault.retry_after_s,
            kind="rate_limited" if fault.status == 429 else "provider_error",
        )

    def generate_text(self, *, model: str, messages: list[dict], params: TextParams) -> TextResult:
        self._maybe_fail()
        return self._answer(model, messages, params)

    def generate_text_stream(
        self, *, model: str, messages: list[dict], params: TextParams, on_delta: OnDelta
    ) -> TextResult:
        """The same answer word by word, the simulated latency spread over the words."""
        self._maybe_fail(wait=False)
        result = self._answer(model, messages, params)
        pieces = text_pieces(result.text)
        pause = self.simulator.latency_ms / 1000 / max(len(pieces), 1)
        if not pieces:
            time.sleep(pause)
        for sent, piece in enumerate(pieces):
            time.sleep(pause)
            try:
                on_delta(piece)
            except StreamStopped as stop:  # cancelled: billed the prompt and the text so far
                stop.usage = self._stopped_usage(model, result, "".join(pieces[: sent + 1]))
                raise
        return result

    def _stopped_usage(self, model: str, result: TextResult, text: str) -> Usage:
        spec = self.catalogue.get(model) if self.catalogue else None
        return Usage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=count_text(text, spec.encoding if spec else "o200k_base"),
        )

    def _answer(self, model: str, messages: list[dict], params: TextParams) -> TextResult:
        spec = self.catalogue.get(model) if self.catalogue else None
        answer = self.simulator.answer(
            messages,
            params.model_dump(exclude_none=True),
            encoding_name=spec.encoding if spec else "o200k_base",
        )
        return TextResult(
            text=answer.text,
            usage=Usage(
                prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens
            ),
            finish_reason=answer.finish_reason,
            tool_calls=answer.tool_calls,
        )

    def generate_image(self, *, model: str, prompt: str, params: ImageParams) -> ImageResult:
        self._maybe_fail()
        width, height = parse_size(params.size)
        images = [
            GeneratedImage(data=draw_png(prompt, width, height, i), width=width, height=height)
            for i in range(params.n)
        ]
        spec = self.catalogue.get(model) if self.catalogue else None
        usage = image_usage(spec, prompt, n=params.n, size=params.size, quality=params.quality)
        return ImageResult(images=images, usage=usage)

    def moderate(self, *, model: str, texts: list[str]) -> Verdict:
        """The stand-in check (GENQ_OFFLINE_FLAGGED_WORDS), labelled synthetic; no faults are
        drawn for it, so the simulator's fault knobs keep describing generation calls."""
        results = [self.simulator.moderate(text) for text in texts]
        return verdict_of(results, model=model, synthetic=True)
