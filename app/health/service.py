"""Worker liveness, recorded in the database by the heartbeat task."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.models import WorkerHeartbeat
from app.models.base import utcnow


def record_heartbeat(session: Session, worker: str, at: datetime | None = None) -> None:
    """Upsert this worker's last-seen time."""
    at = at or utcnow()
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(WorkerHeartbeat).values(worker=worker, last_seen_at=at)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.worker], set_={"last_seen_at": at}
        )
    )


def last_heartbeats(session: Session) -> dict[str, datetime]:
    rows = session.execute(select(WorkerHeartbeat.worker, WorkerHeartbeat.last_seen_at))
    return {row.worker: row.last_seen_at for row in rows}
