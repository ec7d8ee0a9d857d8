"""Per-tenant caps on uploads in flight in this API process: one tenant's slow or stalled uploads cannot take every
connection the server has (429 `upload_quota_exceeded` past the cap)."""

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from api.errors import ProblemError


class UploadSlots:
    def __init__(self, per_tenant: int):
        self.per_tenant = per_tenant
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        with self._lock:
            if self._in_flight[tenant] >= self.per_tenant:
                raise ProblemError(
                    429,
                    "upload_quota_exceeded",
                    f"this tenant already has {self.per_tenant} uploads in progress; wait for one to finish",
                )
            self._in_flight[tenant] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[tenant] -= 1
                if not self._in_flight[tenant]:
                    del self._in_flight[tenant]
