"""Liveness and readiness probes (no authentication: they reveal nothing)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from app.health.service import worker_health

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up. Does no I/O, and runs in the event loop: it answers even when
    every thread and database connection is busy (and skips the admission queue)."""
    return {"status": "ok"}


def _check_database(request: Request) -> str | None:
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the type is reported
        return type(exc).__name__
    return None


def _check_broker(request: Request) -> str | None:
    try:
        with Connection(request.app.state.settings.broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return type(exc).__name__
    return None


def _check_workers(request: Request) -> str:
    """`ok` if a worker ran the heartbeat task within 3 intervals, else `stale` or `none`."""
    settings = request.app.state.settings
    try:
        with request.app.state.session_factory() as session:
            health = worker_health(session, interval_seconds=settings.heartbeat_interval_seconds)
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    return health.state


@router.get(
    "/readyz",
    responses={503: {"description": "A dependency is unreachable."}},
)
def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database and the broker both answer. 503 otherwise.

    `checks.workers` tells whether a worker has recently taken the beat's heartbeat task
    from the broker (`ok`, `stale`, `none`). The API can run without workers, so this check
    fails readiness only when `RRMM_READY_REQUIRES_WORKER=true`.
    """
    checks: dict[str, Any] = {}
    for name, check in (("database", _check_database), ("broker", _check_broker)):
        error = check(request)
        checks[name] = "ok" if error is None else f"unreachable ({error})"
    ready = all(value == "ok" for value in checks.values())
    checks["workers"] = _check_workers(request)
    if request.app.state.settings.ready_requires_worker:
        ready = ready and checks["workers"] == "ok"
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
