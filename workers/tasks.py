"""Thin tasks: ids in, one service call, nothing else. Each re-reads the database, so a task
delivered twice (or after its work was done by the sweeper) does nothing twice."""

from __future__ import annotations

import socket

import structlog

from app import sweep as periodic
from app.acks import jobs as acks_jobs
from app.broker import DISPATCH_TASK, HEARTBEAT_TASK, NOTICES_TASK, SEND_TASK, SWEEP_TASK
from app.db import session_scope
from app.deliveries import jobs as delivery_jobs
from app.health.service import record_heartbeat
from app.incidents import jobs as incident_jobs
from workers.base import ProcessTask
from workers.celery_app import celery_app

log = structlog.get_logger(__name__)


def publish_batch(ids: list[int]) -> None:
    send_deliveries.apply_async(args=(ids,))


def publish_dispatch(briefing_id: int) -> None:
    dispatch_briefing.apply_async(args=(briefing_id,))


@celery_app.task(name=HEARTBEAT_TASK, bind=True, base=ProcessTask)
def heartbeat(self: ProcessTask) -> None:
    """Record that a worker took a task from the broker and reached the database."""
    name = self.request.hostname or f"celery@{socket.gethostname()}"
    with session_scope(self.session_factory) as session:
        record_heartbeat(session, name)


@celery_app.task(name=SEND_TASK, bind=True, base=ProcessTask)
def send_deliveries(self: ProcessTask, ids: list[int]) -> None:
    """Claim and send these ledger rows (ids only: the content is read from the database)."""
    report = delivery_jobs.send_batch(self.session_factory, self.settings, ids, self.transports)
    log.info("batch_sent", **report.__dict__)


@celery_app.task(name=DISPATCH_TASK, bind=True, base=ProcessTask)
def dispatch_briefing(self: ProcessTask, briefing_id: int) -> None:
    """Queue the due deliveries of a new briefing version in batches: the members the
    request left to target are written chunk by chunk first, each chunk queued as soon as
    it is committed."""
    settings = self.settings

    def queue(briefing_id: int) -> int:
        return delivery_jobs.dispatch(
            self.session_factory, settings, publish_batch, briefing_id=briefing_id
        )

    chunks = incident_jobs.advance(
        self.session_factory,
        briefing_id,
        chunk_members=settings.targeting_chunk_members,
        dispatch=queue,
    )
    queued = queue(briefing_id)
    log.info("briefing_dispatched", briefing_id=briefing_id, queued=queued, chunks=chunks)


@celery_app.task(name=SWEEP_TASK, bind=True, base=ProcessTask)
def sweep(self: ProcessTask) -> None:
    """Beat's periodic sweep: re-queue due or stuck rows (so losing the broker loses
    nothing) and fire due reminders, escalations and deadlines."""
    result = periodic.run(
        self.session_factory,
        self.settings,
        publish_batch=publish_batch,
        publish_dispatch=publish_dispatch,
    )
    if any(result.values()):
        log.info("swept", **result)


@celery_app.task(name=NOTICES_TASK, bind=True, base=ProcessTask)
def send_operator_notices(self: ProcessTask) -> None:
    """Beat's periodic outbox run: send the operators' notices that are due. A task of its
    own, so a hung relay delays the notices, never the sweep (lease recovery, retries)."""
    sent = acks_jobs.send_due(self.session_factory, self.settings)
    if sent:
        log.info("operator_notices_sent", count=sent)
