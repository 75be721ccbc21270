"""The acks' work that runs its own transactions (beat's): send the operators' notices,
each claimed and recorded in its own short transaction, with none open while the relay
is spoken to. What each step reads and writes in one session is outbox.py's."""

from __future__ import annotations

from typing import Any

import structlog

from app.acks import outbox
from app.acks.outbox import FAILED, SENT
from app.config import Settings
from app.db import session_scope
from app.models.base import utcnow

log = structlog.get_logger(__name__)


def send_due(session_factory: Any, settings: Settings, limit: int = 20) -> int:
    """Send due operators' notices, each claimed and recorded in its own short transaction
    with none open while the relay is spoken to. Returns how many were sent."""
    sent = 0
    for _ in range(limit):
        with session_scope(session_factory) as session:
            claimed = outbox.claim(session, settings, utcnow())
        if claimed is None:
            break
        outcome = outbox.send(settings, claimed)
        with session_scope(session_factory) as session:
            status = outbox.record(session, settings, claimed, outcome)
        log_event = log.info if status == SENT else log.warning
        log_event(
            "operator_notice",
            notice_id=claimed.id,
            incident_id=str(claimed.incident_id),
            attempt=claimed.attempt,
            status=status,
            error=outcome.error,
        )
        sent += status == SENT
        if not outcome.sent and status != FAILED:
            # The relay is failing: the other due notices wait for the next sweep rather
            # than each waiting out its own timeout now.
            break
    return sent
