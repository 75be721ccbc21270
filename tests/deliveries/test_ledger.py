"""The ledger's fences and clocks, on the real database (no worker: the ledger's own
functions are what is under test): a claim never takes a row of an ended incident or a
superseded version, the sweeper retires such rows, re-queues back off per row, and leases
and due times follow the database's clock on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.deliveries import jobs, ledger
from app.models import Briefing, Delivery, Incident, Role
from app.models.base import utcnow
from app.vocabulary import DeliveryStatus
from tests.incidents.test_status import Person, add_members, declare

LEASE = timedelta(seconds=15)


@pytest.fixture
def declared(
    client: Any, auth: Callable[[Role], dict[str, str]], session_factory: sessionmaker[Session]
) -> tuple[uuid.UUID, list[int]]:
    """An incident with three email rows, none of them claimed."""
    members = add_members(session_factory, [Person("editors", "MA", ["en"])] * 3)
    incident = declare(client, auth(Role.OPERATOR), members)
    incident_id = uuid.UUID(incident["id"])
    with session_factory() as session:
        ids = list(session.scalars(select(Delivery.id).where(Delivery.incident_id == incident_id)))
    assert len(ids) == 3
    return incident_id, ids


def statuses(session_factory: sessionmaker[Session], ids: list[int]) -> list[str]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(Delivery.status).where(Delivery.id.in_(ids)).order_by(Delivery.id)
            )
        )


def claim(session_factory: sessionmaker[Session], ids: list[int]) -> list[ledger.Claimed]:
    with session_scope(session_factory) as session:
        return ledger.claim(session, ids, lease=LEASE, max_attempts=8)


def test_a_claim_never_takes_rows_of_an_ended_incident(session_factory, declared):
    incident_id, ids = declared
    # The incident ended without its rows being retired (a cancel racing a dispatch).
    with session_scope(session_factory) as session:
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(status="cancelled", ended_at=utcnow())
        )
    assert claim(session_factory, ids) == []
    with session_scope(session_factory) as session:
        assert ledger.take_due(session, requeue_after=timedelta(seconds=30), limit=100) == []
        retired = ledger.retire_unwanted(session, since=utcnow() - timedelta(days=1))
    assert retired == 3
    assert statuses(session_factory, ids) == ["cancelled"] * 3


def test_a_claim_never_takes_rows_of_a_superseded_version(session_factory, declared):
    _incident_id, ids = declared
    with session_scope(session_factory) as session:
        session.execute(update(Briefing).values(superseded_at=utcnow()))
    assert claim(session_factory, ids) == []
    with session_scope(session_factory) as session:
        assert ledger.retire_unwanted(session, since=utcnow() - timedelta(days=1)) == 3
    assert statuses(session_factory, ids) == ["superseded"] * 3


def test_rows_whose_lease_ran_out_are_retired_when_their_incident_ended(session_factory, declared):
    incident_id, ids = declared
    assert len(claim(session_factory, ids)) == 3
    with session_scope(session_factory) as session:
        # A dead worker's rows (lease long gone), then the cancel.
        session.execute(update(Delivery).values(lease_until=utcnow() - timedelta(minutes=1)))
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(status="cancelled", ended_at=utcnow())
        )
    with session_scope(session_factory) as session:
        assert ledger.retire_unwanted(session, since=utcnow() - timedelta(days=1)) == 3
    assert statuses(session_factory, ids) == ["cancelled"] * 3


def test_requeues_back_off_per_row(session_factory, declared):
    """A queued row counts as lost after requeue_after, then after twice as long: a long
    queue is not refilled with copies of itself every requeue_after."""
    _incident_id, ids = declared
    wait = timedelta(seconds=0.6)

    def take() -> set[int]:
        with session_scope(session_factory) as session:
            rows = ledger.take_due(session, requeue_after=wait, limit=100)
        return {row.id for row in rows} & set(ids)

    assert take() == set(ids)  # first queued (by the declaration's dispatch or now)
    first = time.monotonic()
    assert take() == set()
    time.sleep(0.8)
    assert take() == set(ids)  # 0.6 s passed: maybe lost, queued again (twice now)
    time.sleep(0.8)
    assert take() == set()  # the second wait is 1.2 s
    time.sleep(0.7)
    assert take() == set(ids)
    assert time.monotonic() - first >= 2.0
    with session_factory() as session:
        counts = set(session.scalars(select(Delivery.enqueue_count).where(Delivery.id.in_(ids))))
    assert counts == {3}


def test_a_claim_clears_the_queue_marks_and_a_retry_waits_by_the_database_clock(
    session_factory, declared
):
    _incident_id, ids = declared
    claimed = claim(session_factory, ids)
    with session_factory() as session:
        rows = session.execute(
            select(Delivery.enqueued_at, Delivery.enqueue_count).where(Delivery.id.in_(ids))
        ).all()
    assert {tuple(r) for r in rows} == {(None, 0)}
    first = claimed[0]
    with session_scope(session_factory) as session:
        assert ledger.finish_one(
            session,
            delivery_id=first.id,
            attempt=first.attempts,
            to_status=DeliveryStatus.RETRYING,
            now=utcnow(),
            error="HTTP 503",
            retry_in=timedelta(seconds=60),
        )
    with session_factory() as session:
        due = session.scalar(select(Delivery.next_attempt_at).where(Delivery.id == first.id))
    assert due is not None
    assert timedelta(seconds=55) < due - utcnow() < timedelta(seconds=65)


def test_a_skewed_worker_clock_does_not_move_leases_on_postgresql(
    session_factory, declared, settings, monkeypatch
):
    """Leases come from the database's clock: a worker an hour fast neither writes leases
    an hour long nor sees every lease as expired."""
    if settings.is_sqlite:
        pytest.skip("SQLite is one machine's file: its clock is this process's")
    _incident_id, ids = declared
    skewed = datetime.now(UTC) + timedelta(hours=1)
    monkeypatch.setattr("app.deliveries.ledger.utcnow", lambda: skewed)
    claimed = claim(session_factory, ids)
    assert len(claimed) == 3
    with session_factory() as session:
        database_now = session.scalar(text("SELECT statement_timestamp()"))
        leases = list(session.scalars(select(Delivery.lease_until).where(Delivery.id.in_(ids))))
    for lease in leases:
        assert abs((lease - database_now) - LEASE) < timedelta(seconds=5), (lease, database_now)
    # Nor does the fast worker take the live leases over as expired.
    assert claim(session_factory, ids) == []
    with session_factory() as session:
        assert session.scalar(select(func.max(Delivery.attempts)).where(Delivery.id.in_(ids))) == 1


def test_dispatch_reads_the_ledger_one_page_at_a_time(session_factory, settings, declared):
    """Each page's batches are published before the next page is read, and every due row
    is published exactly once."""
    _incident_id, ids = declared
    published: list[list[int]] = []
    queued = jobs.dispatch(session_factory, settings, published.append, page_rows=2)
    assert queued == 3
    assert published == [sorted(ids)[:2], sorted(ids)[2:]]
    assert jobs.dispatch(session_factory, settings, published.append, page_rows=2) == 0


def test_take_due_marks_and_returns_one_page_after_the_last_id(session_factory, declared):
    """A page is at most `limit` rows in id order after `after_id`; the rows outside it
    are neither returned nor marked as queued, so the next page (or sweep) takes them."""
    _incident_id, ids = declared
    first, second, third = sorted(ids)
    wait = timedelta(seconds=30)

    def take(**page: Any) -> list[int]:
        with session_scope(session_factory) as session:
            return [row.id for row in ledger.take_due(session, requeue_after=wait, **page)]

    def queued() -> set[int]:
        with session_factory() as session:
            return set(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.id.in_(ids), Delivery.enqueued_at.is_not(None)
                    )
                )
            )

    assert take(limit=1) == [first]
    assert queued() == {first}
    # After the second id: the third, although the second is due too.
    assert take(limit=5, after_id=second) == [third]
    assert queued() == {first, third}
    assert take(limit=5, after_id=third) == []
    assert take(limit=5) == [second]


def test_one_claim_of_pending_retrying_and_expired_rows_keeps_the_counters_exact(
    session_factory, declared
):
    from app.models import DeliveryCounter

    incident_id, ids = declared
    pending, retrying, expired = sorted(ids)
    taken = {c.id: c for c in claim(session_factory, [retrying, expired])}
    with session_scope(session_factory) as session:
        assert ledger.finish_one(
            session,
            delivery_id=retrying,
            attempt=taken[retrying].attempts,
            to_status=DeliveryStatus.RETRYING,
            now=utcnow(),
            error="HTTP 503",
            retry_in=timedelta(0),
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == expired)
            .values(lease_until=utcnow() - timedelta(minutes=1))
        )
    claimed = claim(session_factory, ids)
    assert sorted(c.id for c in claimed) == sorted(ids)
    assert {c.id: c.attempts for c in claimed} == {pending: 1, retrying: 2, expired: 2}
    assert {c.channel for c in claimed} == {"email"}
    with session_factory() as session:
        counts = dict(
            session.execute(
                select(DeliveryCounter.status, func.sum(DeliveryCounter.count))
                .where(DeliveryCounter.incident_id == incident_id)
                .group_by(DeliveryCounter.status)
            ).all()
        )
    assert {status: n for status, n in counts.items() if n} == {"sending": 3}


def counters(session_factory: sessionmaker[Session], incident_id: uuid.UUID) -> dict[str, int]:
    from app.models import DeliveryCounter

    with session_factory() as session:
        rows = session.execute(
            select(DeliveryCounter.status, func.sum(DeliveryCounter.count))
            .where(DeliveryCounter.incident_id == incident_id)
            .group_by(DeliveryCounter.status)
        ).all()
    return {status: int(n) for status, n in rows if n}


def test_one_outcome_write_moves_rows_and_counters_and_keeps_the_fence(session_factory, declared):
    """A success is `sent`; a failure of a version cancelled since is `cancelled`, never
    `retrying` (the fate is read in the write); a row claimed again by another attempt is
    left alone; the counters move by exactly the rows that changed."""
    incident_id, ids = declared
    ok, failed, stolen = sorted(ids)
    taken = {c.id: c for c in claim(session_factory, ids)}
    briefing_id = taken[ok].briefing_id
    with session_scope(session_factory) as session:
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(status="cancelled", ended_at=utcnow())
        )
    outcomes = [
        ledger.Outcome(ok, taken[ok].attempts, briefing_id, DeliveryStatus.SENT),
        ledger.Outcome(
            failed,
            taken[failed].attempts,
            briefing_id,
            DeliveryStatus.RETRYING,
            "HTTP 503",
            timedelta(seconds=5),
        ),
        ledger.Outcome(stolen, taken[stolen].attempts + 1, briefing_id, DeliveryStatus.SENT),
    ]
    with session_scope(session_factory) as session:
        recorded = ledger.record_outcomes(
            session, outcomes, briefing_ids=[briefing_id], now=utcnow()
        )
    assert recorded.statuses == {ok: "sent", failed: "cancelled"}
    assert recorded.fates == {briefing_id: "cancelled"}
    assert statuses(session_factory, sorted(ids)) == ["sent", "cancelled", "sending"]
    assert counters(session_factory, incident_id) == {"sent": 1, "cancelled": 1, "sending": 1}


def test_an_outcome_write_rolled_back_leaves_rows_and_counters_as_they_were(
    session_factory, declared
):
    """Rows and counters change in one transaction (on SQLite too, where the statement's
    leading WITH would otherwise commit on its own)."""
    incident_id, ids = declared
    taken = claim(session_factory, ids)
    with session_factory() as session:
        recorded = ledger.record_outcomes(
            session,
            [ledger.Outcome(c.id, c.attempts, c.briefing_id, DeliveryStatus.SENT) for c in taken],
            briefing_ids=[taken[0].briefing_id],
            now=utcnow(),
        )
        assert len(recorded.statuses) == 3
        session.rollback()
    assert statuses(session_factory, ids) == ["sending"] * 3
    assert counters(session_factory, incident_id) == {"sending": 3}
