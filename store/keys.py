"""API keys: created and revoked from the command line, checked on every request. The plaintext key exists only in
`create_key`'s answer; the database keeps its SHA-256."""

import hashlib
import re
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.jobs import as_utc
from store.models import ApiKey, utcnow

KEY_PREFIX = "sqz_"
DISPLAY_CHARS = 12
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# last_used_at is a hint for humans: writing it at most once a minute keeps requests from all writing the same row.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """Tenant names go into every row and log line: letters, digits, '.', '_' and '-', at most 64 characters."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return tenant


def create_key(session: Session, tenant: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `tenant`: (its row, the plaintext key, which is never stored and cannot be shown again)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=check_tenant(tenant), name=name, key_hash=hash_key(key), prefix=key[:DISPLAY_CHARS])
    session.add(row)
    session.commit()
    return row, key


def verify_key(session: Session, key: str) -> str | None:
    """The tenant of a valid, unrevoked key; None otherwise."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        session.commit()
    return row.tenant


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Keys, oldest first, revoked ones included (they show when they were revoked)."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str, tenant: str) -> bool:
    """Revokes `tenant`'s key `key_id`; False when the tenant has no such unrevoked key. Requests with it fail at once."""
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    session.commit()
    return result.rowcount > 0
