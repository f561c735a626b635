"""API keys: only a SHA-256 of the secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import Column, DateTime, Text, bindparam
from sqlmodel import Field, Session, SQLModel, col, select

from models.db import Money, utcnow
from models.errors import GenqError
from models.webhooks import new_secret

BudgetPeriod = Literal["monthly", "total"]

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
    #: spending limit per period (None = unlimited); spent settles real costs, reserved holds
    #: the worst-case estimates of jobs not finished yet
    budget_usd: Decimal | None = Field(default=None, sa_type=Money)
    budget_period: str = Field(default="total", max_length=16)
    period_start: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    spent_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    reserved_usd: Decimal = Field(default=Decimal(0), sa_type=Money)
    #: the moderation mode of this key's jobs that do not set one (None: GENQ_MODERATION)
    moderation: str | None = Field(default=None, max_length=8)
    #: the webhook URL of the key's jobs that name none (models/webhook_urls.py checks it)
    webhook_url: str | None = Field(default=None, sa_column=Column(Text))
    #: the Standard Webhooks signing secret (`whsec_…`), kept as it is: genq must sign with it
    #: (unlike the API secret, which only needs comparing); see README "Webhooks"
    webhook_secret: str | None = Field(default=None, max_length=64)


def hash_secret(secret: str) -> str:
    """Secrets are 256-bit random, so a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    *,
    name: str,
    budget_usd: Decimal | None = None,
    period: BudgetPeriod = "total",
    moderation: str | None = None,
    webhook_url: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret, which is never stored."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=secret[:12],
        secret_hash=hash_secret(secret),
        budget_usd=budget_usd,
        budget_period=period,
        moderation=moderation,
        webhook_url=webhook_url,
    )
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.created_at))))


#: a start of a key id shorter than this is refused: it would too often match keys by chance
MIN_ID_START = 4
#: ids an ambiguous reference names in its error
SHOWN_MATCHES = 5


def find_key(session: Session, *, ref: str) -> ApiKey:
    """A key by id, by a unique start of its id, or by the displayed prefix of its secret."""
    query = select(ApiKey).where((col(ApiKey.id) == ref) | (col(ApiKey.prefix) == ref))
    matches = list(session.exec(query))
    if not matches and len(ref) >= MIN_ID_START:
        starts = col(ApiKey.id).startswith(ref, autoescape=True)
        matches = list(session.exec(select(ApiKey).where(starts).limit(SHOWN_MATCHES + 1)))
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(k.id for k in matches[:SHOWN_MATCHES])
        more = ", …" if len(matches) > SHOWN_MATCHES else ""
        raise GenqError(
            f"no single key matches {ref!r}: it starts {ids}{more}; give more of the id"
        )
    raise GenqError(
        f"no single key matches {ref!r} (give the id, a unique start of it of at least "
        f"{MIN_ID_START} characters, or the prefix from `keys list`)"
    )


def revoke_key(session: Session, *, ref: str) -> ApiKey:
    """Revoked keys answer 401 from then on; their jobs and usage stay."""
    key = find_key(session, ref=ref)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    return key


def rotate_webhook_secret(session: Session, *, ref: str) -> tuple[ApiKey, str]:
    """Give the key a new webhook signing secret (its first, or a replacement: signatures made
    with the old one stop verifying) and return it."""
    key = find_key(session, ref=ref)
    key.webhook_secret = new_secret()
    session.add(key)
    return key, key.webhook_secret


#: built once: every API request runs it, and a statement built per call is re-keyed per call
_BY_SECRET_HASH = select(ApiKey).where(col(ApiKey.secret_hash) == bindparam("secret_hash"))


def key_by_digest(session: Session, *, digest: str) -> ApiKey | None:
    """The live key whose secret hashes to `digest` (`hash_secret`), if any."""
    found = session.execute(_BY_SECRET_HASH, {"secret_hash": digest})
    key = found.scalars().first()
    if key is None or key.revoked_at is not None:
        return None
    return key
