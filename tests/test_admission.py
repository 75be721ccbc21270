"""Admission control: many dashboards at once queue in the event loop instead of starving
the threadpool and the database pool (which used to stall the API until the pool timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app
from app.middleware import ConcurrencyLimit
from app.models import Role
from tests.support.live_server import serve

Headers = dict[str, str]


class Gate:
    """An inner app whose responses wait until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.inside = 0

    async def __call__(self, scope: Scope, _receive: Receive, send: Send) -> None:
        self.inside += 1
        if scope["path"] != "/fast":
            await self.opened.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.inside -= 1
        await send({"type": "http.response.body", "body": b"ok"})


def test_requests_over_the_limit_wait_then_get_503_while_exempt_paths_pass() -> None:
    async def scenario() -> None:
        gate = Gate()
        limited = ConcurrencyLimit(gate, limit=2, timeout=0.5, exempt=frozenset({"/fast"}))
        transport = httpx.ASGITransport(app=limited)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
            await asyncio.sleep(0.05)
            assert gate.inside == 2
            refused = await client.get("/slow")  # no slot within 0.5 s
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["status"] == 503
            exempt = await client.get("/fast")  # liveness never waits
            assert exempt.status_code == 200
            waiting = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.05)
            assert gate.inside == 2  # the third waits outside the app
            gate.opened.set()
            responses = await asyncio.gather(*held, waiting)
            assert [r.status_code for r in responses] == [200, 200, 200]

    asyncio.run(scenario())


@pytest.fixture
def crowded_api(settings: Settings, engine: Any) -> Iterator[tuple[str, FastAPI]]:  # noqa: ARG001 (requested for its effect: a migrated database)
    apps: list[FastAPI] = []

    def make_app(_: str) -> FastAPI:
        apps.append(create_app(settings))
        return apps[-1]

    with serve(make_app) as url:
        yield url, apps[0]


def test_two_hundred_dashboards_at_once_are_all_served(
    crowded_api: tuple[str, FastAPI],
    client: Any,
    operator: Headers,
    auth: Callable[[Role], Headers],
) -> None:
    """200 concurrent status polls against one API process: every one is answered 200
    (before admission control, the threadpool and the database pool waited on each other
    and the requests ended in 500s after the pool's 30 s timeout)."""
    from tests.support.factories import declare_body, member_payload

    member = client.post("/v1/members", json=member_payload(), headers=operator)
    assert member.status_code == 201, member.text
    incident = client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert incident.status_code == 202, incident.text
    url, _ = crowded_api
    viewer = auth(Role.VIEWER)

    async def poll_all() -> list[int]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:

            async def poll() -> int:
                response = await http.get(
                    f"/v1/incidents/{incident.json()['id']}/status", headers=viewer
                )
                return response.status_code

            return await asyncio.gather(*(poll() for _ in range(200)))

    statuses = asyncio.run(poll_all())
    assert statuses == [200] * 200
