"""Cursor pagination: `after` (the id of the last item the client saw) + `limit` → `{data, has_more}`."""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
T = TypeVar("T")


class PageParams(BaseModel):
    after: str | None = None
    limit: int = DEFAULT_LIMIT


def page_params(
    after: Annotated[
        str | None,
        Query(description="Return the items after this cursor (the id of the last item of the previous page)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT,
) -> PageParams:
    return PageParams(after=after, limit=limit)


PageDep = Annotated[PageParams, Depends(page_params)]


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


def make_page(rows: Sequence[Any], limit: int, convert: Callable[[Any], T]) -> dict:
    """`rows` was fetched with `limit + 1`: the extra row only says whether another page exists."""
    return {
        "data": [convert(row) for row in rows[:limit]],
        "has_more": len(rows) > limit,
    }
