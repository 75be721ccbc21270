"""The status board: a read-only page for a wall screen or a phone.

The page is a shell that holds no incident data, so serving it needs no key. Its script
reads the viewer key from the link's fragment (which browsers never send), then polls the
status API with it like any other dashboard. Everything it loads comes from this app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import HTMLResponse, Response

from app.etags import etag_matches, strong_etag
from app.security import page_headers
from app.vocabulary import DeliveryStatus

pages = APIRouter(tags=["board"], include_in_schema=False)

# The viewer key lives in the page's fragment and in its script's memory: the page is never
# cached, never framed, never sent on as a referrer, and runs only the app's own script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = page_headers(CONTENT_SECURITY_POLICY)
# The hyphenated form that the script also recognises in the address.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def _asset(folder: str, name: str, media_type: str) -> Asset:
    body = files("app.board").joinpath(folder, name).read_bytes()
    return Asset(body, media_type, strong_etag(body))


@cache
def _page_body(name: str) -> bytes:
    """A page's bytes, with the vocabulary the script reads filled in (one copy of it)."""
    body = _asset("templates", name, "text/html").body
    return body.replace(b"{delivery_states}", " ".join(DeliveryStatus).encode())


def _page(name: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_page_body(name), status_code=status, headers=PAGE_HEADERS)


def _static(name: str, media_type: str, if_none_match: str | None) -> Response:
    """A static file, revalidated on every load (a deploy takes effect at once)."""
    asset = _asset("static", name, media_type)
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if etag_matches(if_none_match, asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@pages.get("/board/incidents/{incident_id}", response_class=HTMLResponse)
def board_page(incident_id: str) -> HTMLResponse:
    """The board of one incident, opened as `/board/incidents/{id}#key=<viewer key>`.

    The same bytes for every incident: the figures come from the status API, read with the
    key from the fragment. The incident's existence is not checked here, so the page tells
    nobody without a key whether an id exists.
    """
    if not _UUID.fullmatch(incident_id):
        return _page("not_found.html", 404)
    return _page("board.html")


IfNoneMatch = Annotated[str | None, Header(max_length=1000)]


@pages.get("/board/static/board.js")
def board_script(if_none_match: IfNoneMatch = None) -> Response:
    """The board's script."""
    return _static("board.js", "text/javascript; charset=utf-8", if_none_match)


@pages.get("/board/static/board.css")
def board_stylesheet(if_none_match: IfNoneMatch = None) -> Response:
    """The board's stylesheet."""
    return _static("board.css", "text/css; charset=utf-8", if_none_match)
