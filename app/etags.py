"""Entity tags for conditional GETs (`ETag` / `If-None-Match` → 304)."""

from __future__ import annotations

import hashlib


def strong_etag(body: bytes) -> str:
    """A strong ETag for exactly these bytes."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names this ETag (weak comparison, as RFC 9110 asks for
    If-None-Match), or is `*`."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags
