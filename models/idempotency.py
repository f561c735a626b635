"""Idempotency keys: a replayed request gets its first jobs, a different one under the key a 409.

A key is stored with a fingerprint of the request it was first used for: sha256 of the validated
body as canonical JSON (sorted keys, no whitespace, `null` the same as absent, `1.0` the same as
`1`, decimals without trailing zeros). Only representation is normalised: `prompt` and the same
text as one user message are different bodies. The fingerprint is computed only when a request
carries a key, and checked on the rows the replay lookup reads anyway (no extra query).
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session, col, select

from models.errors import IdempotencyConflict
from models.jobs import Job


def request_fingerprint(body: BaseModel | list[BaseModel]) -> str:
    """The hex sha256 of the body's canonical JSON; a list is a batch body, `{"jobs": [...]}`."""
    if isinstance(body, list):
        payload: Any = {"jobs": [job.model_dump(exclude_none=True) for job in body]}
    else:
        payload = body.model_dump(exclude_none=True)
    canonical = json.dumps(
        _normal(payload),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _normal(value: Any) -> Any:
    """One spelling for values that validate the same: floats that are integers become ints,
    decimals lose trailing zeros, and a `null` member of an object is dropped."""
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def replay(
    session: Session, *, key_id: str, keys: list[str], fingerprint: str, name: str
) -> list[Job]:
    """The jobs first stored under these keys for this API key, in the keys' order; empty when
    the key is new. Raises `IdempotencyConflict` (naming the client's key `name`) when the key
    was used for another request: another body, or only some of these keys."""
    query = select(Job).where(Job.key_id == key_id, col(Job.idempotency_key).in_(keys))
    found = {job.idempotency_key: job for job in session.exec(query)}
    if not found:
        return []
    if len(found) != len(keys) or any(
        job.idempotency_fingerprint not in (None, fingerprint) for job in found.values()
    ):
        raise IdempotencyConflict(
            f"Idempotency-Key {name!r} was already used for a different request; "
            "send the same body to get its first result, or use a new key"
        )
    return [found[k] for k in keys]
