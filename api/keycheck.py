"""The API key is verified before a request's body is read: a client without a valid key cannot make the server
receive, buffer or parse anything. The check runs in a worker thread in a session of its own, closed as soon as the
key is verified (most keys come from the process's key cache without a query), so no connection is held while the
request body streams in. The tenant is left in the request state for api.deps.current_tenant."""

import anyio.to_thread
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from squeezer.api.limits import send_problem

PROTECTED_PREFIX = "/v1/"
# A key check waits at most this long for a worker thread and the database before the request is answered 503.
CHECK_TIMEOUT_S = 10.0


def bearer_key(scope: Scope) -> str | None:
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, key = values[0].decode("latin-1").partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


class KeyCheckMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        state = scope["app"].state
        if not state.settings.auth:
            return await self.app(scope, receive, send)
        key = bearer_key(scope)
        tenant = state.key_cache.cached(key) if key is not None else None  # most keys: no thread, no query
        if key is not None and tenant is None:
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    tenant = await anyio.to_thread.run_sync(_verify, state, key, abandon_on_cancel=True)
            except (TimeoutError, PoolTimeout, OperationalError):
                return await send_problem(
                    scope,
                    send,
                    503,
                    "service_unavailable",
                    "the key check could not reach the database; retry",
                    [(b"retry-after", b"5")],
                )
        if tenant is None:
            detail = "send `Authorization: Bearer <api key>`" if key is None else "the API key is unknown or revoked"
            return await send_problem(scope, send, 401, "unauthorized", detail, [(b"www-authenticate", b"Bearer")])
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def _verify(state, key: str) -> str | None:
    with state.session_factory() as session:
        return state.key_cache.tenant(session, key)
