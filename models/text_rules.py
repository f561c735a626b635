"""Control characters in text a client sends, checked where the text goes to a text column.

PostgreSQL's text columns cannot hold NUL (`\\u0000`): storing one is a DataError, which must
be a 4xx naming the field before anything is written, never a 500 (and SQLite gets the same
answer, so the contract does not depend on the database). JSON columns (`json`, not `jsonb`)
keep the `\\u0000` escape, so a job's prompt, messages and metadata are stored intact.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

NUL = "\x00"
#: what a NUL in a text genq stores (a model's answer, an error) becomes: U+FFFD, the mark
#: of a character that cannot be represented
REPLACEMENT = "\ufffd"


def is_control(ch: str) -> bool:
    """C0 controls and DEL (Unicode category Cc in the ASCII range) and the C1 controls."""
    return ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F


def without_controls(text: str) -> str:
    """`text` with every control character dropped (an upload's filename)."""
    return "".join(ch for ch in text if not is_control(ch))


def storable(text: str) -> str:
    """`text` as a text column can hold it (and as it is shown while it streams): each NUL
    replaced by U+FFFD, so the length is the same."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def refuse_nul(value: str) -> str:
    """A pydantic check: the field holds no NUL (it could not be stored)."""
    if NUL in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


#: a string field stored in a text column
StorableText = Annotated[str, AfterValidator(refuse_nul)]
