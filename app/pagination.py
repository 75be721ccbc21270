"""Cursor pagination: `?limit=&cursor=` → `{"items": [...], "next_cursor": "…" | null}`.

A cursor is the opaque, URL-safe encoding of the last key returned; lists are ordered by
that key, so a page never repeats or skips rows when others are inserted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel

from app.errors import FieldProblem, InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50


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
