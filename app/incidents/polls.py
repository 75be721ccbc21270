"""The dashboards' poll of an incident's status, answered before routing when it can be.

A poll whose caller this process verified within `RRMM_API_KEY_CACHE_SECONDS` and whose
status document it holds (`RRMM_STATUS_CACHE_SECONDS`) needs nothing but two dictionary
lookups and a comparison of ETags: this middleware answers it (304, or 200 with the cached
bytes) without FastAPI's routing and dependency resolution, which cost more than the rest
of the poll together, and without an admission slot (it holds no thread and no database
connection). Anything else — no key, a key or a document not in memory, a malformed
header, another route — goes on to the route itself (`incidents/router.py`), which decides
every refusal, so the two answer alike (tests/incidents/test_status.py checks it).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.cache import KeyCache
from app.etags import etag_matches
from app.incidents.status import StatusCache
from app.models import Role
from app.security import hash_api_key

STATUS_PATH = "/v1/incidents/{incident_id}/status"
_PATH = re.compile(r"/v1/incidents/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})/status")
MAX_IF_NONE_MATCH = 1000  # the route's own limit (a longer header is its 422)


@dataclass(frozen=True)
class _Template:
    path: str


_ROUTE = _Template(STATUS_PATH)


class StatusPolls:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyCache,
        statuses: StatusCache,
    ) -> None:
        self.app = app
        self.keys = keys
        self.statuses = statuses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        scope["route"] = _ROUTE  # the access log and metrics name the route template
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if scope["method"] != "GET":
            return None
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif name == b"if-none-match":
                if if_none_match is not None or len(value) > MAX_IF_NONE_MATCH:
                    return None
                if_none_match = value
        if authorization is None:
            return None
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        principal = self.keys.get(hash_api_key(key))
        if principal is None or not principal.role.includes(Role.VIEWER):
            return None
        cached = self.statuses.peek(uuid.UUID(match.group(1)))
        if cached is None:
            return None
        payload, etag = cached
        headers = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
        tag = None if if_none_match is None else if_none_match.decode("latin-1")
        if etag_matches(tag, etag):
            return 304, headers, b""
        headers += [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json"),
        ]
        return 200, headers, payload
