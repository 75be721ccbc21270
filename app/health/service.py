"""Worker liveness, recorded in the database by the heartbeat task."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.models import WorkerHeartbeat
from app.models.base import utcnow

# The sweep records its runs in the same table under this name. Celery worker names are
# always `name@host`, so it can never be taken for a worker.
SWEEPER = "rrmm.sweep"
# A worker whose last heartbeat is older than this many intervals is stale.
STALE_AFTER_INTERVALS = 3

WorkerState = Literal["ok", "stale", "none"]


@dataclass(frozen=True)
class WorkerHealth:
    state: WorkerState
    last_seen_at: datetime | None
    age_seconds: float | None


def record_heartbeat(session: Session, worker: str, at: datetime | None = None) -> None:
    """Upsert this worker's last-seen time, and count the run."""
    at = at or utcnow()
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(WorkerHeartbeat).values(worker=worker, last_seen_at=at, runs=1)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.worker],
            set_={"last_seen_at": at, "runs": WorkerHeartbeat.runs + 1},
        )
    )


def record_sweep(session: Session, at: datetime | None = None) -> None:
    """Upsert the time of the last sweep (read by the metrics)."""
    record_heartbeat(session, SWEEPER, at)


def last_sweep(session: Session) -> datetime | None:
    return session.scalar(
        select(WorkerHeartbeat.last_seen_at).where(WorkerHeartbeat.worker == SWEEPER)
    )


def sweep_runs(session: Session) -> int:
    """How many sweeps have run (since the sweeper's row was first written)."""
    return (
        session.scalar(select(WorkerHeartbeat.runs).where(WorkerHeartbeat.worker == SWEEPER)) or 0
    )


def worker_health(
    session: Session, *, interval_seconds: float, now: datetime | None = None
) -> WorkerHealth:
    """Whether some worker ran the beat's heartbeat task recently: the whole loop
    (beat → broker → worker → database) turns, not only a process that is alive."""
    now = now or utcnow()
    latest = session.scalar(
        select(func.max(WorkerHeartbeat.last_seen_at)).where(WorkerHeartbeat.worker != SWEEPER)
    )
    if latest is None:
        return WorkerHealth("none", None, None)
    age = max((now - latest).total_seconds(), 0.0)
    fresh = age <= STALE_AFTER_INTERVALS * interval_seconds
    return WorkerHealth("ok" if fresh else "stale", latest, age)
