"""Declaring in constant time: the request writes the first chunk of members, the worker
the rest (`app.incidents.jobs.advance`), set-based, resumable, exactly once per member and channel.

The API runs with chunks of CHUNK members; `advance` is the worker's own function, called
here in-process on the same database (tests/deliveries/test_fanout.py runs it in a real
worker)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.deliveries.content import choose_language
from app.deliveries.quiet_hours import first_attempt_at
from app.incidents import jobs as incident_jobs
from app.incidents import targeting
from app.models import (
    Briefing,
    BriefingTargeting,
    Delivery,
    DeliveryCounter,
    Incident,
    IncidentTarget,
    Member,
    QuotaCounter,
    Role,
)
from tests.support.factories import briefing, declare_body, member_payload

CHUNK = 4
LANGUAGE_LISTS = [["fr", "ar", "en"], ["ar"], ["fr-CA"], ["de"], ["en-GB", "fr"], ["es", "ar"]]
QUIET = [None, {"start": "00:00", "end": "23:59"}, {"start": "22:00", "end": "07:00"}]
ZONES = ["Africa/Casablanca", "Asia/Tokyo", "America/New_York"]


@pytest.fixture
def chunked(client_factory):
    return client_factory(targeting_chunk_members=CHUNK)


@pytest.fixture
def network(chunked, auth) -> list[dict[str, Any]]:
    """19 members of varied languages, zones and quiet hours; every third has no webhook."""
    made = []
    for n in range(19):
        payload = member_payload(
            name=f"Member {n}",
            network="editors" if n % 2 else "personalities",
            languages=LANGUAGE_LISTS[n % len(LANGUAGE_LISTS)],
            timezone=ZONES[n % len(ZONES)],
            quiet_hours=QUIET[n % len(QUIET)],
            webhook_url=None if n % 3 == 0 else f"https://93.184.215.14/hooks/{n}",
        )
        response = chunked.post("/v1/members", json=payload, headers=auth(Role.OPERATOR))
        assert response.status_code == 201, response.text
        made.append(response.json())
    return made


def _declare(client, auth, **overrides: Any) -> dict[str, Any]:
    body = declare_body(**overrides)
    response = client.post("/v1/incidents", json=body, headers=auth(Role.OPERATOR))
    assert response.status_code == 202, response.text
    declared: dict[str, Any] = response.json()
    declared["uuid"] = uuid.UUID(declared["id"])
    return declared


def _briefing_id(db, incident_id: str, version: int = 1) -> int:
    found = db.scalar(
        select(Briefing.id).where(
            Briefing.incident_id == uuid.UUID(incident_id), Briefing.version == version
        )
    )
    assert found is not None
    return int(found)


def _advance(session_factory, briefing_id: int) -> list[int]:
    queued: list[int] = []
    incident_jobs.advance(session_factory, briefing_id, chunk_members=CHUNK, dispatch=queued.append)
    return queued


def _rows(db, briefing_id: int) -> list[Any]:
    db.expire_all()
    return list(
        db.execute(
            select(
                Delivery.member_id,
                Delivery.channel,
                Delivery.language,
                Delivery.next_attempt_at,
                Delivery.status,
            ).where(Delivery.briefing_id == briefing_id)
        )
    )


def test_the_request_writes_one_chunk_and_answers_with_the_whole_count(
    chunked, auth, network, db, session_factory
):
    incident = _declare(chunked, auth)
    assert incident["targeted"] == 19  # counted up front, though only one chunk is written
    version = _briefing_id(db, incident["id"])
    first = _rows(db, version)
    assert len({row.member_id for row in first}) == CHUNK

    job = db.get(BriefingTargeting, version)
    assert (job.members_total, job.members_done, job.finished_at) == (19, CHUNK, None)
    status = chunked.get(f"/v1/incidents/{incident['id']}/status", headers=auth(Role.VIEWER))
    assert status.json()["targeting"] == {"state": "in_progress", "members": 19, "done": CHUNK}

    queued = _advance(session_factory, version)
    assert queued == [version] * 4  # 15 members left: chunks of 4, 4, 4 and the last 3

    rows = _rows(db, version)
    by_member = Counter((row.member_id, row.channel) for row in rows)
    assert set(by_member.values()) == {1}
    members = {m["id"]: m for m in network}
    expected = {(m["id"], "email") for m in network} | {
        (m["id"], "webhook") for m in network if m.get("webhook_url")
    }
    assert {(str(member), channel) for member, channel in by_member} == expected
    db.expire_all()
    job = db.get(BriefingTargeting, version)
    assert job.finished_at is not None
    assert job.members_done == 19
    assert job.rows_written == len(rows)
    assert db.get(Incident, incident["uuid"]).targeted == 19
    assert (
        db.scalar(select(func.count()).where(IncidentTarget.incident_id == incident["uuid"])) == 19
    )
    counted = db.scalar(
        select(func.sum(DeliveryCounter.count)).where(
            DeliveryCounter.incident_id == incident["uuid"]
        )
    )
    assert counted == len(rows)
    languages = ["en", "fr", "ar"]
    for row in rows:
        assert row.language == choose_language(members[str(row.member_id)]["languages"], languages)
    status = chunked.get(f"/v1/incidents/{incident['id']}/status", headers=auth(Role.VIEWER))
    assert status.json()["targeting"] == {"state": "done", "members": 19, "done": 19}
    kinds = [
        e["kind"]
        for e in chunked.get(
            f"/v1/incidents/{incident['id']}/timeline", headers=auth(Role.OPERATOR)
        ).json()["items"]
    ]
    assert kinds[:2] == ["declared", "targeted"]


def test_quiet_hours_are_chosen_in_sql_as_in_python(chunked, auth, network, db, session_factory):
    incident = _declare(chunked, auth, severity="moderate")
    version = _briefing_id(db, incident["id"])
    _advance(session_factory, version)
    created = db.scalar(select(Briefing.created_at).where(Briefing.id == version))
    members = {m["id"]: m for m in network}
    deferred = 0
    for row in _rows(db, version):
        member = members[str(row.member_id)]
        quiet = member.get("quiet_hours")
        start = time.fromisoformat(quiet["start"]) if quiet else None
        end = time.fromisoformat(quiet["end"]) if quiet else None
        # Each chunk decides with its own clock: allow the seconds the test took.
        wanted = first_attempt_at(created, "moderate", member["timezone"], start, end)
        if wanted is None:
            assert row.next_attempt_at is None
        else:
            deferred += 1
            assert row.next_attempt_at is not None
            assert abs(row.next_attempt_at - wanted) < timedelta(minutes=1)
    assert deferred  # "00:00–23:59" keeps someone in quiet hours whatever the time


@pytest.mark.usefixtures("network")
def test_a_worker_that_dies_between_chunks_is_resumed_and_nothing_is_written_twice(
    chunked, auth, db, session_factory
):
    incident = _declare(chunked, auth)
    version = _briefing_id(db, incident["id"])
    calls = 0

    def dies_after_second_chunk(_briefing_id: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SystemExit("worker killed")  # after the chunk's commit, as a SIGKILL would be

    with pytest.raises(SystemExit):
        incident_jobs.advance(
            session_factory, version, chunk_members=CHUNK, dispatch=dies_after_second_chunk
        )
    db.expire_all()
    assert db.get(BriefingTargeting, version).members_done == 3 * CHUNK
    # Not stalled yet: nothing is handed over.
    resumed: list[int] = []
    with session_factory.begin() as session:
        targeting.resume_stalled(session, stalled_after=timedelta(minutes=5), resume=resumed.append)
    assert resumed == []
    with session_factory.begin() as session:
        targeting.resume_stalled(session, stalled_after=timedelta(0), resume=resumed.append)
    assert resumed == [version]
    _advance(session_factory, version)
    rows = _rows(db, version)
    assert len({(r.member_id, r.channel) for r in rows}) == len(rows)
    assert len({r.member_id for r in rows}) == 19
    assert db.get(Incident, incident["uuid"]).targeted == 19


@pytest.mark.usefixtures("network")
def test_two_workers_advancing_one_job_at_once_write_each_chunk_once(
    chunked, auth, db, session_factory
):
    incident = _declare(chunked, auth)
    version = _briefing_id(db, incident["id"])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _advance(session_factory, version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = _rows(db, version)
    assert len(rows) == len({(r.member_id, r.channel) for r in rows})
    assert len({r.member_id for r in rows}) == 19
    db.expire_all()
    assert db.get(BriefingTargeting, version).members_done == 19


@pytest.mark.usefixtures("network")
def test_cancel_during_targeting_stops_it_and_counts_only_who_was_targeted(
    chunked, auth, db, session_factory
):
    incident = _declare(chunked, auth)
    version = _briefing_id(db, incident["id"])
    cancelled = chunked.post(f"/v1/incidents/{incident['id']}/cancel", headers=auth(Role.OPERATOR))
    assert cancelled.status_code == 202, cancelled.text
    db.expire_all()
    assert db.get(BriefingTargeting, version).finished_at is not None  # ended by the cancel
    assert _advance(session_factory, version) == []
    db.expire_all()
    job = db.get(BriefingTargeting, version)
    assert job.finished_at is not None
    assert job.members_done == CHUNK
    assert len({r.member_id for r in _rows(db, version)}) == CHUNK
    assert db.get(Incident, incident["uuid"]).targeted == CHUNK
    events = chunked.get(
        f"/v1/incidents/{incident['id']}/timeline", headers=auth(Role.OPERATOR)
    ).json()["items"]
    stopped = [e for e in events if e["kind"] == "targeted"]
    assert stopped
    assert stopped[0]["detail"]["stopped"] is True


@pytest.mark.usefixtures("network")
def test_an_update_during_targeting_reaches_every_member_once(chunked, auth, db, session_factory):
    incident = _declare(chunked, auth)
    declared = _briefing_id(db, incident["id"])
    updated = chunked.post(
        f"/v1/incidents/{incident['id']}/updates",
        json={"briefing": briefing(en="", fr="")},
        headers=auth(Role.OPERATOR),
    )
    assert updated.status_code == 202, updated.text
    assert updated.json()["targeted"] == 19
    version = _briefing_id(db, incident["id"], 2)
    _advance(session_factory, declared)  # sees it was superseded and stops
    _advance(session_factory, version)
    assert len({r.member_id for r in _rows(db, declared)}) == CHUNK
    rows = _rows(db, version)
    assert len(rows) == len({(r.member_id, r.channel) for r in rows})
    assert len({r.member_id for r in rows}) == 19
    db.expire_all()
    assert db.get(Incident, incident["uuid"]).targeted == 19
    assert (
        db.scalar(select(func.count()).where(IncidentTarget.incident_id == incident["uuid"])) == 19
    )


def test_quota_segments_are_counted_chunk_by_chunk(chunked, auth, network, db, session_factory):
    quotas = [
        {"network": "editors", "responses": ["will_engage"], "min": 1},
        {"languages": ["fr"], "responses": ["will_engage"], "min": 1},
    ]
    incident = _declare(chunked, auth, followup={"quotas": quotas})
    _advance(session_factory, _briefing_id(db, incident["id"]))
    db.expire_all()
    counted = dict(
        db.execute(
            select(QuotaCounter.quota_index, QuotaCounter.targeted).where(
                QuotaCounter.incident_id == incident["uuid"]
            )
        ).all()
    )
    editors = sum(1 for m in network if m["network"] == "editors")
    french = sum(1 for m in network if any(lang.split("-")[0] == "fr" for lang in m["languages"]))
    assert counted == {0: editors, 1: french}


@pytest.mark.usefixtures("network")
def test_activation_and_the_finished_fanout_wait_for_the_last_chunk(
    chunked, auth, db, session_factory
):
    from app.incidents.service import activate_mobilized

    incident = _declare(chunked, auth, severity="extreme")
    version = _briefing_id(db, incident["id"])

    def sent_so_far_then_activated() -> int:
        now = datetime.now(UTC)
        with session_factory.begin() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.briefing_id == version)
                .values(status="sent", attempts=1, sent_at=now, updated_at=now)
            )
            return activate_mobilized(session)

    # Every row written so far has had its attempt: only targeting holds the incident back.
    assert sent_so_far_then_activated() == 0
    _advance(session_factory, version)
    assert sent_so_far_then_activated() == 1
    assert db.scalar(select(func.count()).select_from(Member)) == 19
