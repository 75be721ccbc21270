"""Thin tasks: ids in, one service call, nothing else. Each re-reads the database, so a task
delivered twice (or after its work was done by the sweeper) does nothing twice."""

from __future__ import annotations

import socket
from datetime import timedelta

import structlog
from celery import Task
from sqlalchemy.orm import Session, sessionmaker

from app.acks import followup, outbox
from app.config import get_settings
from app.db import create_session_factory, engine_from_settings, session_scope
from app.deliveries import service as deliveries
from app.health.service import record_heartbeat
from app.incidents import service as incidents
from app.incidents import targeting
from workers.celery_app import DISPATCH_TASK, NOTICES_TASK, SEND_TASK, celery_app

log = structlog.get_logger(__name__)
_session_factory: sessionmaker[Session] | None = None


def session_factory() -> sessionmaker[Session]:
    """The worker process's session factory, built on first use (after any fork)."""
    global _session_factory
    if _session_factory is None:
        _session_factory = create_session_factory(engine_from_settings(get_settings()))
    return _session_factory


def reset_session_factory() -> None:
    global _session_factory
    if _session_factory is not None:
        engine = _session_factory.kw["bind"]
        engine.dispose(close=False)
    _session_factory = None


def publish_batch(ids: list[int]) -> None:
    send_deliveries.apply_async(args=(ids,))


def publish_dispatch(briefing_id: int) -> None:
    dispatch_briefing.apply_async(args=(briefing_id,))


@celery_app.task(name="rrmm.heartbeat", bind=True)
def heartbeat(self: Task) -> None:  # type: ignore[type-arg]
    """Record that a worker took a task from the broker and reached the database."""
    name = self.request.hostname or f"celery@{socket.gethostname()}"
    with session_scope(session_factory()) as session:
        record_heartbeat(session, name)


@celery_app.task(name=SEND_TASK)
def send_deliveries(ids: list[int]) -> None:
    """Claim and send these ledger rows (ids only: the content is read from the database)."""
    report = deliveries.send_batch(session_factory(), get_settings(), ids)
    log.info("batch_sent", **report.__dict__)


@celery_app.task(name=DISPATCH_TASK)
def dispatch_briefing(briefing_id: int) -> None:
    """Queue the due deliveries of a new briefing version in batches: the members the
    request left to target are written chunk by chunk first, each chunk queued as soon as
    it is committed."""
    settings = get_settings()

    def queue(briefing_id: int) -> int:
        return deliveries.dispatch(
            session_factory(), settings, publish_batch, briefing_id=briefing_id
        )

    chunks = targeting.advance(
        session_factory(),
        briefing_id,
        chunk_members=settings.targeting_chunk_members,
        dispatch=queue,
    )
    queued = queue(briefing_id)
    log.info("briefing_dispatched", briefing_id=briefing_id, queued=queued, chunks=chunks)


@celery_app.task(name="rrmm.sweep")
def sweep() -> None:
    """Beat's periodic sweep: re-queue due or stuck rows (so losing the broker loses
    nothing) and fire due reminders, escalations and deadlines."""
    settings = get_settings()
    with session_scope(session_factory()) as session:
        resumed = targeting.resume_stalled(
            session,
            stalled_after=timedelta(seconds=settings.targeting_stalled_seconds),
            resume=publish_dispatch,
        )
        expired = incidents.expire_pending(session)
    result = deliveries.sweep(session_factory(), settings, publish_batch)
    result["targeting_resumed"] = resumed
    result["approvals_expired"] = expired
    result["timers"] = followup.fire_due(session_factory(), get_settings(), publish_dispatch)
    if any(result.values()):
        log.info("swept", **result)


@celery_app.task(name=NOTICES_TASK)
def send_operator_notices() -> None:
    """Beat's periodic outbox run: send the operators' notices that are due. A task of its
    own, so a hung relay delays the notices, never the sweep (lease recovery, retries)."""
    sent = outbox.send_due(session_factory(), get_settings())
    if sent:
        log.info("operator_notices_sent", count=sent)
