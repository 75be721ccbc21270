"""Cursor pagination: `?limit=&cursor=` → `{"items": [...], "next_cursor": "…" | null}`.

A cursor is the opaque, URL-safe encoding of the last key returned; lists are ordered by
that key, so a page never repeats or skips rows when others are inserted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from app.errors import FieldProblem, InvalidInput

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": key}).encode()).decode().rstrip("=")


def _bad_cursor() -> InvalidInput:
    reason = "not a cursor returned by this API"
    return InvalidInput(
        f"query.cursor: {reason}", errors=[FieldProblem(field="query.cursor", reason=reason)]
    )


def _decode(cursor: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)["k"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc


def decode_uuid_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id after which the next page starts, or None for the first page."""
    if not cursor:
        return None
    try:
        return uuid.UUID(str(_decode(cursor)))
    except ValueError as exc:
        raise _bad_cursor() from exc


# Integer keys are positive BIGINT ids: any other number is no cursor of ours, and one
# beyond 64 bits would make the database driver fail (a 500) instead of a 422.
_MAX_INT_KEY = 2**63 - 1


def decode_int_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    key = _decode(cursor)
    if not isinstance(key, int) or isinstance(key, bool) or not 0 < key <= _MAX_INT_KEY:
        raise _bad_cursor()
    return key


def next_cursor(rows: Sequence[T], limit: int, key: str | int | None) -> str | None:
    """Given `limit + 1` fetched rows, the cursor for the next page (or None at the end)."""
    if len(rows) > limit and key is not None:
        return encode_cursor(key)
    return None


@dataclass(frozen=True, slots=True)
class PageParams:
    """`?limit=&cursor=` of a list route. The cursor is decoded by the route (its key is a
    uuid or an integer), after the rows it pages through are known to exist."""

    limit: int
    cursor: str | None

    def after_uuid(self) -> uuid.UUID | None:
        return decode_uuid_cursor(self.cursor)

    def after_int(self) -> int | None:
        return decode_int_cursor(self.cursor)


def page_params(default_limit: int = DEFAULT_LIMIT) -> Callable[..., Awaitable[PageParams]]:
    """The dependency reading `limit` (1 to 500, `default_limit` if absent) and `cursor`
    (a coroutine: it does no I/O, so it is not worth a worker thread)."""

    async def dependency(
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = default_limit,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> PageParams:
        return PageParams(limit=limit, cursor=cursor)

    return dependency


PageDep = Annotated[PageParams, Depends(page_params())]


def page(
    rows: Sequence[R],
    limit: int,
    *,
    key: Callable[[R], str | int],
    view: Callable[[Sequence[R]], list[T]],
) -> Page[T]:
    """One page from `limit + 1` fetched rows: the first `limit` as `view` shows them, and
    the cursor after the last of them (`key`) when there are more."""
    items = rows[:limit]
    return Page(
        items=view(items), next_cursor=next_cursor(rows, limit, key(items[-1]) if items else None)
    )
