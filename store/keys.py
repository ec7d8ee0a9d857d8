"""API keys: created and revoked from the command line, checked on every request. The plaintext key exists only in
`create_key`'s answer; the database keeps its SHA-256."""

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from squeezer.store.db import changed_rows
from squeezer.store.jobs import as_utc
from squeezer.store.models import ApiKey, utcnow

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
        raise ValueError(
            f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return tenant


def create_key(session: Session, tenant: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `tenant`: (its row, the plaintext key, which is never stored and cannot be shown again)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=check_tenant(tenant), name=name, key_hash=hash_key(key), prefix=key[:DISPLAY_CHARS])
    session.add(row)
    session.commit()
    return row, key


def verify_key_hash(session: Session, key_hash: str) -> str | None:
    """The tenant of a valid, unrevoked key, by its hash; None otherwise (one query; `KeyCache` saves most)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        session.commit()
    return row.tenant


class KeyCache:
    """Key hash → tenant of recently verified keys, so most requests check their key without a query.

    An entry lives `ttl_s` seconds: a revoked key keeps working for at most that long in each API process (the
    revocation is a database write that other processes are not told about), an unknown key is never cached. At
    `max_entries` the cache starts over rather than grow with the keys an attacker tries. ttl_s = 0: no cache.
    `clock` gives the seconds entries age by (a test's own clock shows expiry without waiting for it)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> str | None:
        """The tenant of `key` when it was verified less than `ttl_s` seconds ago; None means: ask `tenant`."""
        entry = self._entries.get(hash_key(key))
        return entry[0] if entry is not None and entry[1] > self.clock() else None

    def tenant(self, session: Session, key: str) -> str | None:
        """The tenant of a valid, unrevoked key (as of at most `ttl_s` seconds ago); None otherwise."""
        cached = self.cached(key)
        if cached is not None:
            return cached
        digest, now = hash_key(key), self.clock()
        tenant = verify_key_hash(session, digest)
        with self._lock:
            if tenant is None:
                self._entries.pop(digest, None)
            elif self.ttl_s > 0:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[digest] = (tenant, now + self.ttl_s)
        return tenant


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Keys, oldest first, revoked ones included (they show when they were revoked)."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str, tenant: str) -> bool:
    """Revokes `tenant`'s key `key_id`; False when the tenant has no such unrevoked key. Requests with it fail within
    the API's key cache time (`Settings.api_key_cache_s`)."""
    matched = changed_rows(
        session,
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()),
    )
    session.commit()
    return matched > 0
