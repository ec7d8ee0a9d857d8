"""RFC 9457 problem details: every error the API returns is `application/problem+json` with a stable `type` URI."""

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://squeezer.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)
ErrorT = TypeVar("ErrorT", bound=Exception)

# Problem codes for plain HTTP statuses (routing, method, validation), so clients can match on `type` alone.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(examples=[PROBLEM_BASE + "not_found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str | None = Field(None, examples=["job job_0123 does not exist"])
    instance: str | None = Field(None, examples=["/v1/jobs/job_0123"])
    errors: list[dict[str, Any]] | None = Field(None, description="Field errors of a 422 validation problem.")


class ProblemError(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ):
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors


def loggable(path: str) -> str:
    """A client's path as a log may show it: non-printable and non-ASCII characters escaped (no forged lines)."""
    return ascii(path)[1:-1]


def problem_type(code: str) -> str:
    return PROBLEM_BASE + code


def problem_response(request: Request, error: ProblemError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(
        type=problem_type(error.code),
        title=error.title,
        status=error.status,
        detail=error.detail,
        instance=request.url.path,
        errors=error.errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def not_found(what: str, identifier: str) -> ProblemError:
    return ProblemError(404, "not_found", f"{what} {identifier} does not exist")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the problem documents an operation can answer with."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "example": {
                        "type": problem_type(_STATUS_CODES.get(status, "error")),
                        "title": HTTPStatus(status).phrase,
                        "status": status,
                        "detail": "A sentence that says what went wrong and what to do.",
                    }
                }
            },
        }
        for status in statuses
    }


async def _problem_error(request: Request, error: ProblemError) -> JSONResponse:
    return problem_response(request, error)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(error.status_code, "http_error")
    detail = (
        error.detail if isinstance(error.detail, str) and error.detail != HTTPStatus(error.status_code).phrase else None
    )
    if error.status_code == 404 and detail is None:
        detail = f"no resource at {request.url.path}"
    if error.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        request,
        ProblemError(error.status_code, code, detail),
        headers=getattr(error, "headers", None),
    )


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "loc": list(item.get("loc", ())),
            "msg": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in error.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in errors)
    return problem_response(request, ProblemError(422, "validation_error", detail, errors=errors))


async def _database_unavailable(request: Request, error: OperationalError | PoolTimeout) -> JSONResponse:
    """The database is down or restarting, or its connection pool stayed exhausted: a retryable 503, not a 500."""
    log.warning(
        "database unavailable on %s %s: %s",
        request.method,
        loggable(request.url.path),
        getattr(error, "orig", error),
    )
    problem = ProblemError(503, "service_unavailable", "the database is unavailable; retry shortly")
    return problem_response(request, problem, headers={"Retry-After": "5"})


async def _unstorable_value(request: Request, error: DataError) -> JSONResponse:
    """A value PostgreSQL cannot even compare (a NUL character in an id or a name): the client's error, not ours."""
    log.info("unstorable value on %s %s: %s", request.method, loggable(request.url.path), error.orig)
    problem = ProblemError(
        422, "validation_error", "a value in the request cannot be stored (NUL characters are not allowed)"
    )
    return problem_response(request, problem)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """Never leaks a traceback: the log has it, the client gets a generic problem."""
    log.exception("unhandled error on %s %s", request.method, loggable(request.url.path))
    return problem_response(
        request,
        ProblemError(
            500,
            "internal_error",
            "The server hit an unexpected error; it has been logged.",
        ),
    )


def _handle(app: FastAPI, kind: type[ErrorT], handler: Callable[[Request, ErrorT], Awaitable[JSONResponse]]) -> None:
    """Starlette calls a handler only with errors of the class it was registered for, but annotates every handler
    as taking any Exception, so a handler typed for its own class needs this one checked cast."""
    app.add_exception_handler(kind, handler)  # type: ignore[arg-type]


def install_problem_handlers(app: FastAPI) -> None:
    _handle(app, ProblemError, _problem_error)
    _handle(app, StarletteHTTPException, _http_error)
    _handle(app, RequestValidationError, _validation_error)
    _handle(app, OperationalError, _database_unavailable)
    _handle(app, PoolTimeout, _database_unavailable)  # every pooled connection busy: retry, not 500
    _handle(app, DataError, _unstorable_value)
    _handle(app, Exception, _unexpected_error)
