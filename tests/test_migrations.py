"""Migrations build the schema the models describe, and step down and up again.

Each test gets a fresh, empty database: a SQLite file, and a new PostgreSQL database when
`RRMM_TEST_DATABASE_URL` is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app import migrate
from app.db import create_db_engine
from app.models import Base
from tests.support.database import scratch_database

MODEL_TABLES = set(Base.metadata.tables)
# PostgreSQL is exercised whenever the run has one (CI always does).
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("RRMM_TEST_DATABASE_URL") else [])


@pytest.fixture(params=BACKENDS)
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with scratch_database(os.environ["RRMM_TEST_DATABASE_URL"], "rrmm_migrations") as url:
        yield url


def table_names(database_url: str) -> set[str]:
    engine = create_db_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_differences(database_url: str) -> list[object]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def head_revision() -> tuple[str, str | None]:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    head = script.get_revision("head")
    assert head is not None
    down = head.down_revision
    assert down is None or isinstance(down, str), "a merge head needs its own test"
    return head.revision, down


def test_there_is_one_head():
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))

    assert len(script.get_heads()) == 1


def test_upgrade_creates_every_table(fresh_database_url):
    assert table_names(fresh_database_url) == set()

    migrate.upgrade(fresh_database_url)

    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}
    assert migrate.current_heads(fresh_database_url) == {head_revision()[0]}


def test_upgrade_is_a_no_op_when_at_head(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    migrate.upgrade(fresh_database_url)

    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}


def test_models_match_the_migrations(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    assert schema_differences(fresh_database_url) == []


def test_downgrade_one_step_then_upgrade_again(fresh_database_url):
    head, previous = head_revision()
    migrate.upgrade(fresh_database_url)

    migrate.downgrade(fresh_database_url, "-1")

    assert migrate.current_heads(fresh_database_url) == ({previous} if previous else set())
    if previous is None:
        assert table_names(fresh_database_url) & MODEL_TABLES == set()

    migrate.upgrade(fresh_database_url)

    assert migrate.current_heads(fresh_database_url) == {head}
    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}
    assert schema_differences(fresh_database_url) == []


def test_downgrade_to_base_removes_every_table(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    migrate.downgrade(fresh_database_url, "base")

    assert table_names(fresh_database_url) & MODEL_TABLES == set()
    assert migrate.current_heads(fresh_database_url) == set()


def test_upgrade_keeps_rows_of_a_database_at_head(fresh_database_url):
    """Running the migrations at start-up (as `rrmm run` does) must not touch the data."""
    migrate.upgrade(fresh_database_url)
    engine = create_db_engine(fresh_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO worker_heartbeats (worker, last_seen_at) VALUES (:w, :at)"),
                {"w": "celery@test", "at": "2026-01-01 00:00:00+00:00"},
            )
        migrate.upgrade(fresh_database_url)
        with engine.connect() as connection:
            workers = connection.execute(text("SELECT worker FROM worker_heartbeats")).all()
    finally:
        engine.dispose()

    assert [tuple(row) for row in workers] == [("celery@test",)]


def early_incidents_table() -> Any:
    """The incidents columns every revision has had, for rows written at an old revision
    (the model has more columns now)."""
    import sqlalchemy as sa

    from app.models.base import JSONList, UTCDateTime

    return sa.table(
        "incidents",
        *(sa.column(c) for c in ("reference", "title", "severity", "urgency", "mode", "status")),
        sa.column("id", sa.Uuid()),
        sa.column("declared_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
        *(
            sa.column(c, JSONList)
            for c in ("countries", "themes", "audience", "channels", "responses", "followup")
        ),
    )


def test_status_counters_and_timeline_are_backfilled(fresh_database_url):
    """Incidents that predate the status counters are counted once by the migrations, and
    their history is numbered in time order for the timeline and the events stream."""
    from datetime import timedelta

    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from app.acks.service import delay_bucket
    from app.models import (
        Ack,
        AnswerCounter,
        AnswerDelayCounter,
        CurrentAck,
        IncidentEvent,
        IncidentTarget,
        Member,
        QuotaCounter,
    )
    from app.models.base import JSONList, UTCDateTime, utcnow, uuid7

    migrate.upgrade(fresh_database_url, "f8e95597496e")
    engine = create_db_engine(fresh_database_url)
    now = utcnow()
    # The incidents table as it was before the counters (the model has `targeted` now).
    old_incidents = early_incidents_table()
    incident_id = uuid7()
    quota = {"network": "editors", "responses": ["will_engage"], "min": 1}
    try:
        with Session(engine) as session, session.begin():
            session.execute(
                sa.insert(old_incidents).values(
                    id=incident_id,
                    reference="RRMM-2026-0001",
                    title="t",
                    severity="severe",
                    urgency="immediate",
                    mode="actual",
                    status="active",
                    declared_at=now,
                    updated_at=now,
                    countries=[],
                    themes=[],
                    audience={},
                    channels=["email"],
                    responses=["will_engage"],
                    followup={"quotas": [quota]},
                )
            )
            members = [
                Member(
                    network=network,
                    name=f"M{n}",
                    country="MA",
                    languages=["fr"],
                    themes=[],
                    tags=[],
                    email=f"m{n}@example.org",
                    timezone="UTC",
                    consent_given_at=now,
                    consent_method="written",
                )
                for n, network in enumerate(("editors", "personalities"))
            ]
            session.add_all(members)
            session.flush()
            # Core, with the columns of that revision (the models have more now).
            old_briefings = sa.table(
                "briefings",
                sa.column("id", sa.Integer()),
                sa.column("incident_id", sa.Uuid()),
                sa.column("version", sa.Integer()),
                sa.column("kind"),
                sa.column("languages", JSONList),
                sa.column("content", JSONList),
                sa.column("created_at", UTCDateTime()),
            )
            briefing_id = session.execute(
                sa.insert(old_briefings)
                .values(
                    incident_id=incident_id,
                    version=1,
                    kind="declared",
                    languages=["en"],
                    content={},
                    created_at=now,
                )
                .returning(old_briefings.c.id)
            ).scalar_one()
            session.add_all(
                IncidentTarget(incident_id=incident_id, member_id=m.id) for m in members
            )
            old_deliveries = sa.table(
                "deliveries",
                sa.column("id", sa.Integer()),
                sa.column("incident_id", sa.Uuid()),
                sa.column("briefing_id", sa.Integer()),
                sa.column("member_id", sa.Uuid()),
                *(sa.column(c) for c in ("channel", "language", "status", "attempts")),
                sa.column("created_at", UTCDateTime()),
                sa.column("updated_at", UTCDateTime()),
            )
            delivery_id = session.execute(
                sa.insert(old_deliveries)
                .values(
                    incident_id=incident_id,
                    briefing_id=briefing_id,
                    member_id=members[0].id,
                    channel="email",
                    language="en",
                    status="pending",
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(old_deliveries.c.id)
            ).scalar_one()
            answered_at = now + timedelta(seconds=30)
            # Core, with the columns of that revision (the model has `event_seq` now).
            acks = sa.table(
                "acks",
                sa.column("id", sa.Integer()),
                sa.column("incident_id", sa.Uuid()),
                sa.column("member_id", sa.Uuid()),
                sa.column("answered_at", UTCDateTime()),
                *(
                    sa.column(c)
                    for c in (
                        "delivery_id",
                        "response",
                        "route",
                        "channel",
                        "briefing_version",
                        "language",
                        "late",
                    )
                ),
            )
            ack_id = session.execute(
                sa.insert(acks)
                .values(
                    incident_id=incident_id,
                    member_id=members[0].id,
                    delivery_id=delivery_id,
                    response="will_engage",
                    route="api",
                    channel="email",
                    briefing_version=1,
                    language="en",
                    answered_at=answered_at,
                    late=False,
                )
                .returning(acks.c.id)
            ).scalar_one()
            session.add(
                CurrentAck(
                    incident_id=incident_id,
                    member_id=members[0].id,
                    ack_id=ack_id,
                    response="will_engage",
                    answered_at=answered_at,
                    first_answered_at=answered_at,
                )
            )

        migrate.upgrade(fresh_database_url)

        with Session(engine) as session:
            targeted = session.scalar(sa.text("SELECT targeted FROM incidents"))
            answers = session.execute(
                sa.select(AnswerCounter.incident_id, AnswerCounter.response, AnswerCounter.count)
            ).all()
            delays = session.execute(
                sa.select(AnswerDelayCounter.bucket, AnswerDelayCounter.count)
            ).all()
            quotas = session.execute(
                sa.select(QuotaCounter.quota_index, QuotaCounter.targeted, QuotaCounter.answered)
            ).all()
            timeline = session.execute(
                sa.select(IncidentEvent.seq, IncidentEvent.kind, IncidentEvent.briefing_version)
            ).all()
            answer_seqs = session.scalars(sa.select(Ack.event_seq)).all()
            last_seq = session.scalar(sa.text("SELECT event_seq FROM incidents"))
    finally:
        engine.dispose()

    assert targeted == 2
    assert answers == [(incident_id, "will_engage", 1)]
    assert delays == [(delay_bucket(30), 1)]
    assert quotas == [(0, 1, 1)]
    assert timeline == [(1, "declared", 1)]
    assert answer_seqs == [2]  # answered 30 s after the declaration
    assert last_seq == 2


def test_versions_followed_by_an_update_are_marked_superseded(fresh_database_url):
    """Fencing (0007): existing versions that an update replaced are superseded at that
    update's time; the latest version and the end notices are not."""
    from datetime import timedelta

    import sqlalchemy as sa

    from app.models.base import JSONList, UTCDateTime, utcnow, uuid7

    migrate.upgrade(fresh_database_url, "a9cc5c1577bc")
    engine = create_db_engine(fresh_database_url)
    now = utcnow()
    incidents = early_incidents_table()
    briefings = sa.table(
        "briefings",
        sa.column("id", sa.Integer()),
        sa.column("incident_id", sa.Uuid()),
        sa.column("version", sa.Integer()),
        sa.column("kind"),
        sa.column("languages", JSONList),
        sa.column("content", JSONList),
        sa.column("created_at", UTCDateTime()),
    )
    incident_id = uuid7()
    kinds = ["declared", "reminder", "updated", "updated", "resolved"]
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(incidents).values(
                    id=incident_id,
                    reference="RRMM-2026-0001",
                    title="t",
                    severity="severe",
                    urgency="immediate",
                    mode="actual",
                    status="resolved",
                    declared_at=now,
                    updated_at=now,
                    countries=[],
                    themes=[],
                    audience={},
                    channels=["email"],
                    responses=["acknowledged"],
                    followup={},
                )
            )
            for version, kind in enumerate(kinds, start=1):
                connection.execute(
                    sa.insert(briefings).values(
                        incident_id=incident_id,
                        version=version,
                        kind=kind,
                        languages=["en"],
                        content={},
                        created_at=now + timedelta(minutes=version),
                    )
                )
        migrate.upgrade(fresh_database_url)
        with engine.connect() as connection:
            after = sa.table(
                "briefings",
                sa.column("version", sa.Integer()),
                sa.column("superseded_at", UTCDateTime()),
            )
            rows = connection.execute(
                sa.select(after.c.version, after.c.superseded_at).order_by(after.c.version)
            ).all()
    finally:
        engine.dispose()

    superseded = dict(rows)
    assert superseded[1] == now + timedelta(minutes=3)  # at the first update after it
    assert superseded[2] == now + timedelta(minutes=3)  # the reminder too
    assert superseded[3] == now + timedelta(minutes=4)  # the first update, by the second
    assert superseded[4] is None  # the latest version
    assert superseded[5] is None  # the stand-down
