"""Per-tenant counts of work in flight in this API process: uploads being received (capped, so one tenant's slow or
stalled uploads cannot take every connection the server has) and submissions being checked (counted against the
tenant's concurrent-job quota)."""

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from squeezer.api.errors import ProblemError


class TenantSlots:
    """`limit` None: counted, never refused; else past it `hold` raises a 429 problem with `code`."""

    def __init__(self, limit: int | None, code: str = "", what: str = ""):
        self.limit, self.code, self.what = limit, code, what
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    def in_flight(self, tenant: str) -> int:
        with self._lock:
            return self._in_flight[tenant]

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        with self._lock:
            if self.limit is not None and self._in_flight[tenant] >= self.limit:
                raise ProblemError(
                    429, self.code, f"this tenant already has {self.limit} {self.what} in progress; wait for one to end"
                )
            self._in_flight[tenant] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[tenant] -= 1
                if not self._in_flight[tenant]:
                    del self._in_flight[tenant]
