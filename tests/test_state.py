"""The application's state: typed, set once by `create_app`, opened by the lifespan, and
read by the routers only through their dependencies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.state import AppState, app_state

APP = Path(__file__).resolve().parent.parent / "app"
UNTYPED_READ = re.compile(r"\.state\.|(?<!from )\bapp\.state\b")


def test_the_lifespan_opens_what_needs_the_database(settings, engine):  # noqa: ARG001 (a migrated database)
    app = create_app(settings)
    state = app_state(app)

    assert isinstance(state, AppState)
    assert state.settings is settings
    with pytest.raises(RuntimeError, match="not started"):
        _ = state.session_factory
    with TestClient(app) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        running = state.started()
        assert running.session_factory.kw["bind"] is running.engine


def test_no_router_reads_the_untyped_starlette_state():
    routers = sorted(APP.glob("*/router.py"))

    assert routers
    for router in routers:
        # `request.app.state.x`, `app.state.x` (importing `app.state`, the module, is fine).
        assert not UNTYPED_READ.search(router.read_text()), router
