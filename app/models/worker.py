from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow


class WorkerHeartbeat(Base):
    """The last time each worker ran the beat's heartbeat task: proof that the whole loop
    (beat → broker → worker → database) turns, not just that a process is alive."""

    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How many times it was recorded (for the sweeper's row: how many sweeps ran).
    runs: Mapped[int] = mapped_column(Integer, default=1, server_default="0")
