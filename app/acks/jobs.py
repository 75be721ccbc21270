"""The follow-up's work that runs its own transactions (beat's): fire the due timers, one
transaction each, and send the operators' notices, with no transaction open while the
relay is spoken to. What each step reads and writes in one session is followup.py's and
outbox.py's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import update

from app.acks import followup, outbox
from app.acks.outbox import FAILED, SENT
from app.clock import SYSTEM, Clock
from app.config import Settings
from app.db import session_scope
from app.incidents import briefings
from app.models import IncidentTimer
from app.models.base import utcnow

log = structlog.get_logger(__name__)


RETRY_FAILED_TIMER = timedelta(minutes=1)


def fire_due(
    session_factory: Any,
    settings: Settings,
    dispatch: briefings.Dispatcher,
    limit: int = 50,
    *,
    clock: Clock = SYSTEM,
) -> int:
    """Fire due timers, one transaction each. A timer whose work fails is postponed a
    minute and fired again then. (The operators' notice is only queued here: see
    app/acks/outbox.py for its sending and retries.)"""
    fired = 0
    for _ in range(limit):
        timer_id = None
        try:
            with session_scope(session_factory) as session:
                timer = followup.take_due_timer(session, clock.now())
                if timer is None:
                    return fired
                timer_id = timer.id
                timer.outcome = followup.fire(session, timer, settings=settings, dispatch=dispatch)[
                    :200
                ]
                followup.add_to_timeline(session, timer)
                log.info(
                    "timer_fired",
                    kind=timer.kind,
                    incident_id=str(timer.incident_id),
                    outcome=timer.outcome,
                )
        except Exception as exc:
            # Whatever failed (a database error, or a bug), this timer waits a minute and
            # the others still fire: one bad timer never blocks the rest.
            log.warning("timer_postponed", timer_id=timer_id, error=type(exc).__name__)
            if timer_id is not None:
                with session_scope(session_factory) as session:
                    session.execute(
                        update(IncidentTimer)
                        .where(IncidentTimer.id == timer_id)
                        .values(due_at=clock.now() + RETRY_FAILED_TIMER)
                    )
            continue
        fired += 1
    return fired


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
