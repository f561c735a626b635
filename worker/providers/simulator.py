"""The offline simulator: deterministic text with real token counts, real PNGs, latency, faults.

Its output is always labelled synthetic. It backs both the in-process `offline` provider and
`genq simulator`, the same behaviour served over HTTP as an OpenAI-compatible API.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from PIL import Image, ImageDraw

from models.catalogue import ModelSpec
from models.moderation import CATEGORIES, flagged_categories, parse_flagged_words
from models.pricing import Usage
from models.settings import parse_faults
from models.tokens import count_messages, count_request, count_text, encoding
from worker.providers.synth_json import instance_of

SYNTHETIC_LABEL = "[synthetic]"
#: a streamed answer's pieces: each word with the spaces before it
_PIECE = re.compile(r"\s*\S+|\s+")
#: with no max_tokens, a reply is this many tokens at most (a short paragraph)
DEFAULT_REPLY_TOKENS = 120
WORDS = (
    "spring campaign bright fresh launch customers story value simple clear bold green growth "
    "morning light ideas team season offer quality craft detail honest warm calm river city "
    "garden ocean mountain path journey voice design color future moment"
).split()


@dataclass(frozen=True, kw_only=True)
class Fault:
    """A simulated failure: the HTTP status and, for 429, the Retry-After seconds."""

    status: int
    retry_after_s: float | None = None

    @property
    def message(self) -> str:
        return f"simulated {self.status} from the genq offline simulator"


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One chat completion as the simulator makes it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict] | None = None


#: what the simulator writes when it is told to answer invalid JSON (an unclosed object)
INVALID_JSON = '{"synthetic": "an answer cut short'


@dataclass(kw_only=True)
class Simulator:
    latency_ms: int = 0
    faults: dict[int, Decimal] = field(default_factory=dict)
    retry_after_s: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    #: queued outcomes (an HTTP status, 200 = success) served before the random faults
    script: deque[int] = field(default_factory=deque)
    #: probability that an answer asked to be JSON is invalid JSON (GENQ_OFFLINE_INVALID_OUTPUT)
    invalid_output: float = 0.0
    #: queued JSON answers (`invalid` or `valid`) served before the random draw
    output_script: deque[str] = field(default_factory=deque)
    #: the stand-in moderation's words and their categories (GENQ_OFFLINE_FLAGGED_WORDS)
    flagged_words: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_spec(
        cls,
        *,
        latency_ms: int,
        faults: str,
        retry_after_s: float = 1.0,
        invalid_output: float = 0.0,
        flagged_words: str = "",
    ) -> Simulator:
        return cls(
            latency_ms=latency_ms,
            faults=parse_faults(faults),
            retry_after_s=retry_after_s,
            invalid_output=invalid_output,
            flagged_words=parse_flagged_words(flagged_words),
        )

    def moderate(self, text: str) -> tuple[bool, dict[str, bool], dict[str, float]]:
        """The stand-in moderation of one text: flagged when it contains a flagged word;
        each category's score is 0.99 when flagged, else a small number derived from the text."""
        hits = flagged_categories(text, self.flagged_words)
        rng = random.Random(_seed(text))
        scores = {c: 0.99 if c in hits else round(rng.uniform(0, 0.01), 6) for c in CATEGORIES}
        return bool(hits), {c: c in hits for c in CATEGORIES}, scores

    def _answers_invalid(self) -> bool:
        with self._lock:
            if self.output_script:
                return self.output_script.popleft() == "invalid"
            return bool(self.invalid_output) and self.rng.random() < self.invalid_output

    def next_fault(self) -> Fault | None:
        """Draw this call's outcome: a scripted one first, else by the fault probabilities."""
        with self._lock:
            status = self.script.popleft() if self.script else self._draw()
        if status is None or status < 400:
            return None
        return Fault(status=status, retry_after_s=self.retry_after_s if status == 429 else None)

    def _draw(self) -> int | None:
        roll, edge = Decimal(repr(self.rng.random())), Decimal(0)
        for status, probability in self.faults.items():
            edge += probability
            if roll < edge:
                return status
        return None

    def wait(self) -> None:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None,
        encoding_name: str = "o200k_base",
    ) -> tuple[str, int, int]:
        """Reply text, prompt tokens and completion tokens, all derived from the prompt."""
        prompt_tokens = count_messages(messages, encoding_name)
        text = _reply(messages, max_tokens or DEFAULT_REPLY_TOKENS, encoding_name)
        return text, prompt_tokens, count_text(text, encoding_name)

    def answer(
        self, messages: list[dict], params: dict, *, encoding_name: str = "o200k_base"
    ) -> Answer:
        """A chat completion honouring `tools`, `tool_choice` and `response_format`."""
        limit = params.get("max_tokens")
        if not params.get("tools") and not params.get("response_format"):
            text, prompt_tokens, completion_tokens = self.complete(
                messages, max_tokens=limit, encoding_name=encoding_name
            )
            finish = "length" if limit == completion_tokens else "stop"
            return Answer(
                text=text,
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        prompt_tokens = count_request(messages, params, encoding_name)
        rng = random.Random(_seed(_prompt(messages)))
        tool = tool_to_call(messages, params)
        if tool is not None:
            call = _tool_call(tool, messages, rng)
            function = call["function"]
            used = count_text(function["name"] + function["arguments"], encoding_name)
            return Answer(
                text="",
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=used,
                tool_calls=[call],
            )
        text = self._text_for(messages, params, rng, encoding_name)
        return _cut(text, limit, prompt_tokens, encoding_name)

    def _text_for(
        self, messages: list[dict], params: dict, rng: random.Random, encoding_name: str
    ) -> str:
        kind = (params.get("response_format") or {}).get("type", "text")
        if kind == "text":
            return _reply(messages, params.get("max_tokens") or DEFAULT_REPLY_TOKENS, encoding_name)
        if self._answers_invalid():
            return INVALID_JSON
        if kind == "json_schema":
            schema = (params["response_format"].get("json_schema") or {}).get("schema") or {}
            return json.dumps(instance_of(schema, rng))
        return json.dumps({"synthetic": True, "text": _reply(messages, 40, encoding_name)})


def tool_to_call(messages: list[dict], params: dict) -> dict | None:
    """The function the simulated model calls: the named one, else the first; none with
    `tool_choice: none`, and none under `auto` once the last message is a tool's result (the
    round is answered in text, so a client's function-calling loop ends)."""
    tools = params.get("tools") or []
    choice = params.get("tool_choice") or "auto"
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t["function"] for t in tools if t["function"]["name"] == name), None)
    if choice == "auto" and messages and messages[-1].get("role") == "tool":
        return None
    return tools[0]["function"]


def _tool_call(function: dict, messages: list[dict], rng: random.Random) -> dict:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = json.dumps(instance_of(parameters, rng))
    digest = hashlib.sha256(f"{function['name']}:{_prompt(messages)}".encode()).hexdigest()
    return {
        "id": f"call_{digest[:24]}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _cut(text: str, limit: int | None, prompt_tokens: int, encoding_name: str) -> Answer:
    """At most `limit` tokens, as a real model would stop (`length`: JSON cut short)."""
    enc = encoding(encoding_name)
    tokens = enc.encode(text, disallowed_special=())
    if limit is not None and len(tokens) > limit:
        text = enc.decode(tokens[:limit])
        return Answer(
            text=text,
            finish_reason="length",
            prompt_tokens=prompt_tokens,
            completion_tokens=limit,
        )
    return Answer(
        text=text, finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=len(tokens)
    )


def text_pieces(text: str) -> list[str]:
    """The pieces a simulated stream sends, in order; joined they are `text` exactly."""
    return _PIECE.findall(text)


def image_usage(
    spec: ModelSpec | None, prompt: str, *, n: int, size: str, quality: str | None
) -> Usage:
    """What the real model would report: token counts for token-billed models, else images."""
    per_image = spec.image_token_count(size, quality) if spec else None
    if spec is not None and spec.image_output_per_1m and per_image:
        return Usage(
            prompt_tokens=count_text(prompt, spec.encoding),
            completion_tokens=n * per_image,
            images=n,
            size=size,
            quality=quality,
        )
    return Usage(images=n, size=size, quality=quality)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _prompt(messages: list[dict]) -> str:
    return "\n".join(m.get("content") or "" for m in messages)


def _reply(messages: list[dict], limit: int, encoding_name: str) -> str:
    """Deterministic words seeded by the prompt, cut to at most `limit` tokens."""
    rng = random.Random(_seed(_prompt(messages)))
    target = min(limit, 20 + rng.randrange(DEFAULT_REPLY_TOKENS))
    words = " ".join(rng.choice(WORDS) for _ in range(target + 8))
    text = f"{SYNTHETIC_LABEL} {words}"
    enc = encoding(encoding_name)
    tokens = enc.encode(text)[: max(target, 1)]
    text = enc.decode(tokens).rstrip()
    while count_text(text, encoding_name) > limit and " " in text:  # re-encoding can differ
        text = text.rsplit(" ", 1)[0]
    return text


def draw_png(prompt: str, width: int, height: int, index: int = 0) -> bytes:
    """A real PNG of the requested size, coloured by the prompt and labelled SYNTHETIC."""
    rng = random.Random(_seed(f"{index}:{prompt}"))
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient
    )
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(width, height) // 12 + 1, max(width, height) // 4 + 2)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=3)
    draw.rectangle((0, 0, width, 28), fill=(0, 0, 0))
    draw.text((8, 8), f"SYNTHETIC - genq offline simulator - {prompt[:60]}", fill=(255, 255, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
