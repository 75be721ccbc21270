"""Beat's periodic sweep, across the domains: finish what is stuck, start what is due,
expire what waited too long, fire the due timers. Losing every broker message loses no
work, because this finds it again in the database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.deliveries import ledger
from app.deliveries.jobs import Publish, dispatch
from app.health.service import record_sweep
from app.incidents import jobs as incident_jobs
from app.incidents import service as incidents
from app.incidents import targeting
from app.incidents.briefings import Dispatcher
from app.models.base import utcnow


def sweep(
    session_factory: sessionmaker[Session], settings: Settings, publish: Publish
) -> dict[str, int]:
    """What beat runs every few seconds: finish what is stuck, start what is due."""
    with session_scope(session_factory) as session:
        failed = ledger.fail_exhausted_leases(session, max_attempts=settings.delivery_max_attempts)
        retired = ledger.retire_unwanted(
            session,
            since=utcnow() - timedelta(seconds=settings.delivery_max_age_seconds),
        )
    # Its own transaction: incident rows are locked before delivery counters everywhere
    # else (updates, answers), so they are never held together here in the other order.
    with session_scope(session_factory) as session:
        activated = incidents.activate_mobilized(session)
        record_sweep(session)
    queued = dispatch(session_factory, settings, publish)
    finished = incident_jobs.record_finished_fanouts(session_factory)
    return {
        "queued": queued,
        "failed_lost": failed,
        "retired": retired,
        "activated": activated,
        "fanouts_finished": finished,
    }


def run(
    session_factory: sessionmaker[Session],
    settings: Settings,
    *,
    publish_batch: Publish,
    publish_dispatch: Dispatcher,
) -> dict[str, int]:
    """Beat's periodic sweep: re-queue due or stuck rows (so losing the broker loses
    nothing) and fire due reminders, escalations and deadlines. Returns what it did."""
    with session_scope(session_factory) as session:
        resumed = targeting.resume_stalled(
            session,
            stalled_after=timedelta(seconds=settings.targeting_stalled_seconds),
            resume=publish_dispatch,
        )
        expired = incidents.expire_pending(session)
    result = sweep(session_factory, settings, publish_batch)
    result["targeting_resumed"] = resumed
    result["approvals_expired"] = expired
    result["timers"] = incident_jobs.fire_due(session_factory, settings, publish_dispatch)
    return result
