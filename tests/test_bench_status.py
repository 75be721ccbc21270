"""The status benchmark's roster seeding: what it writes is what the status reports."""

from __future__ import annotations

import random

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.incidents.status import incident_status
from app.models import Ack, CurrentAck, Delivery, Incident, IncidentEvent, IncidentTarget
from app.vocabulary import DeliveryStatus
from bench.listeners import delivery_report
from bench.status import check_counters, parse_args, percentile, read_in_process, seed_incident


def test_seeded_incidents_are_final_answered_and_counted(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    rng = random.Random(7)
    small = seed_incident(session_factory, members=8, country="SN", answered_share=0.5, rng=rng)
    large = seed_incident(session_factory, members=90, country="TN", answered_share=0.5, rng=rng)
    with session_factory() as session:
        for seeded in (small, large):
            incident_id = seeded.incident_id
            assert check_counters(session, incident_id) == []
            targets = session.scalar(
                select(func.count())
                .select_from(IncidentTarget)
                .where(IncidentTarget.incident_id == incident_id)
            )
            assert targets == seeded.members
            by_status = dict(
                session.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.incident_id == incident_id)
                    .group_by(Delivery.status)
                ).all()
            )
            assert set(by_status) <= {DeliveryStatus.SENT, DeliveryStatus.FAILED}
            assert sum(by_status.values()) == seeded.deliveries == 2 * seeded.members
            assert by_status.get(DeliveryStatus.FAILED, 0) == seeded.failed
            answers = session.scalar(
                select(func.count())
                .select_from(CurrentAck)
                .where(CurrentAck.incident_id == incident_id)
            )
            assert answers == seeded.answered > 0
            # Every answer has its own event number, after the declaration's, in time order.
            numbered = session.scalars(
                select(Ack.event_seq)
                .where(Ack.incident_id == incident_id)
                .order_by(Ack.answered_at, Ack.id)
            )
            seqs = [seq for seq in numbered if seq is not None]
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs) == seeded.answered
            incident = session.get(Incident, incident_id)
            assert incident is not None
            assert max(seqs) == incident.event_seq
            declared = session.scalar(
                select(IncidentEvent.seq).where(
                    IncidentEvent.incident_id == incident_id, IncidentEvent.kind == "declared"
                )
            )
            assert declared is not None
            assert declared < min(seqs)
            status = incident_status(session, incident_id)
            assert status["targeted"] == seeded.members
            assert status["answers"]["answered"] == seeded.answered
            assert status["deliveries"]["by_status"] == by_status
    assert large.failed > 0  # one delivery in 40 among 180

    reads = read_in_process(
        engine,
        session_factory,
        {"small": small.incident_id, "large": large.incident_id},
        reads=3,
    )
    # A fixed number of statements whatever the roster's size.
    assert reads["small"]["statements_per_read"] == reads["large"]["statements_per_read"]
    assert reads["small"]["statements_per_read"] >= 1


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.5) == 3.0
    assert percentile([], 0.5) is None


def test_the_listeners_report_finds_a_missed_status_and_the_delays() -> None:
    # Two listeners; a change at t=10; the second listener never gets document "b".
    seen = [
        [(5.0, "old"), (10.4, "a"), (11.4, "b")],
        [(5.0, "old"), (10.6, "a")],
    ]
    report = delivery_report(seen, changes=[10.0], since=10.0)
    assert report["status_documents"] == 2  # "old" came before the measured window
    assert report["missed"] == 1
    assert report["every_listener_saw_every_status"] is False
    assert report["change_to_listener_s"]["max"] == 0.6
    assert report["spread_s"]["max"] == 0.2  # "a": 10.4 to 10.6
    complete = delivery_report([seen[0], seen[0]], changes=[10.0], since=10.0)
    assert complete["every_listener_saw_every_status"] is True
    assert complete["missed"] == 0


def test_the_listeners_option_parses_and_defaults() -> None:
    assert parse_args([]).listeners == 0
    assert parse_args(["--only", "listeners"]).listeners == 1000
    args = parse_args(["--listeners", "50", "--listeners-changes", "1"])
    assert (args.listeners, args.listeners_changes) == (50, 1)
