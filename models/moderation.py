"""Moderation as data: the modes, how a job's mode is resolved, and the shape of a verdict.

A job's mode is resolved once, at submit (the request's `policy.moderation`, else its key's
default, else `GENQ_MODERATION`), and stored in the job's request policy, so the worker (and
anything else that reads the stored request) knows it without another query. A verdict is what
one moderation check found; the job stores `{"input": verdict, "output": verdict}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from models.schemas import JobCreate

Mode = Literal["off", "flag", "block"]
OnError = Literal["fail", "allow"]
MODES: tuple[Mode, ...] = ("off", "flag", "block")

#: error types of jobs the moderation step ends
BLOCKED = "moderation_blocked"
UNAVAILABLE = "moderation_unavailable"
#: how many of a verdict's highest category scores it keeps
TOP_SCORES = 3
#: OpenAI's moderation categories (omni-moderation-latest), as the API names them
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: the category the offline stand-in reports for a flagged word named without one
DEFAULT_OFFLINE_CATEGORY = "harassment"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What one moderation check found (over one or several texts)."""

    flagged: bool
    model: str
    #: the flagged categories, in OpenAI's names (`self-harm/intent`), sorted
    categories: list[str] = field(default_factory=list)
    #: the highest category scores, highest first
    scores: dict[str, float] = field(default_factory=dict)
    #: made by the offline simulator's stand-in, not by a moderation model
    synthetic: bool = False
    #: set when the check could not be made and the job went on (GENQ_MODERATION_ON_ERROR=allow)
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The verdict as stored on the job (and shown as it is)."""
        data = {
            "flagged": self.flagged,
            "categories": self.categories,
            "scores": self.scores,
            "model": self.model,
            "synthetic": self.synthetic,
        }
        return data | ({"error": self.error} if self.error else {})


def verdict_of(
    results: Iterable[tuple[bool, Mapping[str, bool | None], Mapping[str, float]]],
    *,
    model: str,
    synthetic: bool = False,
) -> Verdict:
    """One verdict over several results (one per text): flagged if any is, every flagged
    category, and each category's highest score."""
    flagged, categories, scores = False, set(), {}
    for result_flagged, result_categories, result_scores in results:
        flagged = flagged or result_flagged
        categories.update(name for name, hit in result_categories.items() if hit)
        for name, score in result_scores.items():
            scores[name] = max(score, scores.get(name, 0.0))
    top = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:TOP_SCORES]
    return Verdict(
        flagged=flagged,
        model=model,
        categories=sorted(categories),
        scores=dict(top),
        synthetic=synthetic,
    )


def unavailable(model: str, reason: str, *, synthetic: bool = False) -> Verdict:
    """The verdict of a check that kept failing, for a job allowed to go on without it."""
    return Verdict(flagged=False, model=model, synthetic=synthetic, error=reason)


def resolve_mode(requested: Mode | None, key_default: str | None, default: Mode) -> Mode:
    """The job's own mode, else its key's default, else the deployment's."""
    return requested or key_default or default  # type: ignore[return-value]


def with_mode(body: JobCreate, mode: Mode) -> JobCreate:
    """The request with its resolved mode written into its policy (stored with the job)."""
    if body.policy.moderation == mode:
        return body
    policy = body.policy.model_copy(update={"moderation": mode})
    return body.model_copy(update={"policy": policy})


def on_error_for(mode: Mode, setting: OnError | None) -> OnError:
    """What a moderation outage does: the setting when given, else `fail` for `block` (nothing
    unchecked is generated or served) and `allow` for `flag` (flag only reports)."""
    return setting or ("fail" if mode == "block" else "allow")


def input_texts(messages: list[dict]) -> list[str]:
    """Every message's text (system, user, assistant and tool results), in order."""
    return [m["content"] for m in messages if isinstance(m.get("content"), str) and m["content"]]


def output_texts(text: str, tool_calls: list[dict] | None) -> list[str]:
    """What a text answer says: its text and the arguments of the functions it called."""
    calls = [c.get("function", {}).get("arguments") or "" for c in tool_calls or ()]
    return [t for t in (text, *calls) if t]


_WORD = re.compile(r"\w+")


def parse_flagged_words(spec: str) -> dict[str, str]:
    """`kill,spam:harassment` → {word: category}; words are matched case-insensitively."""
    words = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        word, _, category = part.partition(":")
        category = category.strip() or DEFAULT_OFFLINE_CATEGORY
        if not _WORD.fullmatch(word.strip()) or category not in CATEGORIES:
            raise ValueError(f"{part!r} is not WORD or WORD:CATEGORY (an OpenAI category)")
        words[word.strip().lower()] = category
    return words


def flagged_categories(text: str, words: Mapping[str, str]) -> set[str]:
    """The categories of the flagged words `text` contains, as whole words."""
    if not words:
        return set()
    return {words[w] for w in _WORD.findall(text.lower()) if w in words}


class VerdictPublic(BaseModel):
    """One moderation check as the job shows it."""

    flagged: bool
    categories: list[str]
    scores: dict[str, float] = Field(description="the highest category scores")
    model: str
    synthetic: bool = Field(description="made by the offline simulator's stand-in")
    error: str | None = Field(
        default=None, description="the check failed and the job went on (ON_ERROR=allow)"
    )


class ModerationPublic(BaseModel):
    """The job's moderation verdicts: of its input, and of its text output once checked."""

    input: VerdictPublic | None = None
    output: VerdictPublic | None = None
