"""API keys: only a SHA-256 of the secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from sqlalchemy import DateTime
from sqlmodel import Field, Session, SQLModel, select

from models.db import utcnow

#: every secret starts with this, so leaked keys are easy to grep for and to scan
SECRET_PREFIX = "genq_"


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16, description="first characters of the secret, for display")
    secret_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


def hash_secret(secret: str) -> str:
    """Secrets are 256-bit random, so a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret, which is never stored."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=secret[:12], secret_hash=hash_secret(secret))
    session.add(key)
    session.flush()
    return key, secret


def authenticate(session: Session, *, secret: str) -> ApiKey | None:
    """The live key this secret belongs to, if any."""
    key = session.exec(select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret))).first()
    if key is None or key.revoked_at is not None:
        return None
    return key
