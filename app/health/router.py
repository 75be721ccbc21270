"""Liveness and readiness probes (no authentication: they reveal nothing)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from app.deps import AppStateDep
from app.health.schemas import Liveness, Readiness, ReadinessChecks
from app.health.service import worker_health
from app.state import AppState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """The process is up. Does no I/O, and runs in the event loop: it answers even when
    every thread and database connection is busy (and skips the admission queue)."""
    return Liveness(status="ok")


def _check_database(state: AppState) -> str | None:
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the type is reported
        return type(exc).__name__
    return None


def _check_broker(state: AppState) -> str | None:
    try:
        with Connection(state.settings.broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return type(exc).__name__
    return None


def _check_workers(state: AppState) -> str:
    """`ok` if a worker ran the heartbeat task within 3 intervals, else `stale` or `none`."""
    interval = state.settings.heartbeat_interval_seconds
    try:
        with state.session_factory() as session:
            health = worker_health(session, interval_seconds=interval)
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    return health.state


def _reachable(error: str | None) -> str:
    return "ok" if error is None else f"unreachable ({error})"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
)
def readyz(state: AppStateDep) -> JSONResponse:
    """Ready to serve: the database and the broker both answer. 503 otherwise.

    `checks.workers` tells whether a worker has recently taken the beat's heartbeat task
    from the broker (`ok`, `stale`, `none`). The API can run without workers, so this check
    fails readiness only when `RRMM_READY_REQUIRES_WORKER=true`.
    """
    database = _reachable(_check_database(state))
    broker = _reachable(_check_broker(state))
    ready = database == broker == "ok"
    checks = ReadinessChecks(database=database, broker=broker, workers=_check_workers(state))
    if state.settings.ready_requires_worker:
        ready = ready and checks.workers == "ok"
    readiness = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if ready else 503)
