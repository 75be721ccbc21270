"""What dashboards read: an incident's status from counters, and its coverage funnel."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from functools import partial
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.acks.service import bucket_seconds
from app.clock import SYSTEM, Clock
from app.db import session_scope
from app.etags import strong_etag
from app.incidents.schemas import IncidentStatusView
from app.incidents.service import get_incident
from app.models import (
    Ack,
    AnswerCounter,
    AnswerDelayCounter,
    Briefing,
    BriefingTargeting,
    CurrentAck,
    Delivery,
    DeliveryCounter,
    IncidentTarget,
    IncidentTimer,
    Member,
    QuotaCounter,
)
from app.vocabulary import DeliveryStatus

CoverageBy = Literal["network", "country", "language", "channel"]


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else round(max((later - earlier).total_seconds(), 0.0), 3)


def median_from_histogram(buckets: list[tuple[int, int]]) -> float | None:
    """The lower median of the delays a histogram counts, as its bucket's middle."""
    total = sum(count for _, count in buckets)
    if not total:
        return None
    wanted, seen = (total + 1) // 2, 0
    for bucket, count in sorted(buckets):
        seen += count
        if seen >= wanted:
            return round(bucket_seconds(bucket), 3)
    raise AssertionError("unreachable")  # pragma: no cover


def incident_status(session: Session, incident_id: uuid.UUID) -> dict[str, Any]:
    """The status body, in a fixed number of statements whatever the roster's size.

    Every figure comes from counter rows kept in the writers' transactions (deliveries per
    channel and status, answers per response, quota progress, `incidents.targeted`), from
    bounded per-incident rows (timers, follow-up briefing versions), or from one index
    lookup (the first answer: the head of `(incident_id, first_answered_at)`).

    The median time to answer is approximate: it is read from a histogram of first-answer
    delays in buckets about 9% wide (`answer_delay_counters`, at most ~180 rows per
    incident), so it is within ±4.5% of the exact lower median.
    """
    incident = get_incident(session, incident_id)
    by_channel: dict[str, dict[str, int]] = {}
    by_status: dict[str, int] = {}
    changes: list[datetime | None] = [incident.updated_at]
    for channel, state, count, changed in session.execute(
        select(
            DeliveryCounter.channel,
            DeliveryCounter.status,
            DeliveryCounter.count,
            DeliveryCounter.updated_at,
        ).where(DeliveryCounter.incident_id == incident_id)
    ):
        changes.append(changed)
        if count:
            by_channel.setdefault(channel, {})[state] = count
            by_status[state] = by_status.get(state, 0) + count
    by_response: dict[str, int] = {}
    for response, count, changed in session.execute(
        select(AnswerCounter.response, AnswerCounter.count, AnswerCounter.updated_at).where(
            AnswerCounter.incident_id == incident_id
        )
    ):
        changes.append(changed)
        if count:
            by_response[response] = count
    answered = sum(by_response.values())
    histogram = [
        (bucket, count)
        for bucket, count in session.execute(
            select(AnswerDelayCounter.bucket, AnswerDelayCounter.count).where(
                AnswerDelayCounter.incident_id == incident_id
            )
        )
    ]
    first_answer = session.scalar(
        select(CurrentAck.first_answered_at)
        .where(CurrentAck.incident_id == incident_id)
        .order_by(CurrentAck.first_answered_at)
        .limit(1)
    )
    quota_rows = {
        row.quota_index: row
        for row in session.execute(
            select(QuotaCounter.quota_index, QuotaCounter.targeted, QuotaCounter.answered).where(
                QuotaCounter.incident_id == incident_id
            )
        )
    }
    quotas = []
    for index, quota in enumerate(incident.followup.get("quotas", [])):
        row = quota_rows.get(index)
        quota_answered = row.answered if row else 0
        quotas.append(
            {
                "network": quota.get("network"),
                "countries": quota.get("countries", []),
                "languages": quota.get("languages", []),
                "responses": quota["responses"],
                "min": quota["min"],
                "targeted": row.targeted if row else 0,
                "answered": quota_answered,
                "met": quota_answered >= int(quota["min"]),
            }
        )
    fired: dict[str, list[dict[str, Any]]] = {"reminder": [], "escalation": []}
    for timer in session.execute(
        select(
            IncidentTimer.kind, IncidentTimer.sequence, IncidentTimer.done_at, IncidentTimer.outcome
        )
        .where(
            IncidentTimer.incident_id == incident_id,
            IncidentTimer.kind.in_(tuple(fired)),
            IncidentTimer.done_at.is_not(None),
        )
        .order_by(IncidentTimer.kind, IncidentTimer.sequence)
    ):
        changes.append(timer.done_at)
        fired[timer.kind].append(
            {"sequence": timer.sequence, "fired_at": timer.done_at, "outcome": timer.outcome}
        )
    versions: dict[str, list[int]] = {"reminder": [], "escalated": []}
    for kind, version in session.execute(
        select(Briefing.kind, Briefing.version)
        .where(Briefing.incident_id == incident_id, Briefing.kind.in_(tuple(versions)))
        .order_by(Briefing.version)
    ):
        versions[kind].append(version)
    job = session.scalar(
        select(BriefingTargeting)
        .where(BriefingTargeting.incident_id == incident_id)
        .order_by(BriefingTargeting.briefing_id.desc())
        .limit(1)
    )
    progress = None
    if job is not None:
        changes.append(job.touched_at)
        progress = {
            "state": "in_progress" if job.finished_at is None else "done",
            "members": job.members_total,
            "done": job.members_done,
        }
    targeted = incident.targeted
    first_seconds = _seconds(first_answer, incident.declared_at)
    median = median_from_histogram(histogram)
    if median is not None and first_seconds is not None:
        # A bucket's middle can lie before the exact first answer: never show that.
        median = max(median, first_seconds)
    return {
        "id": incident.id,
        "reference": incident.reference,
        "status": incident.status,
        "mode": incident.mode,
        "severity": incident.severity,
        "targeted": targeted,
        "deliveries": {"by_status": by_status, "by_channel": by_channel},
        "answers": {
            "answered": answered,
            "by_response": by_response,
            "ack_rate": round(answered / targeted, 4) if targeted else None,
            "first_answer_seconds": first_seconds,
            "median_answer_seconds": median,
        },
        "quotas": quotas,
        "followup": {
            "reminders": fired["reminder"],
            "escalations": fired["escalation"],
            "reminder_versions": versions["reminder"],
            "escalation_versions": versions["escalated"],
        },
        "targeting": progress,
        "declared_at": incident.declared_at,
        "updated_at": incident.updated_at,
        "last_change_at": max(c for c in changes if c is not None),
    }


def status_document(session: Session, incident_id: uuid.UUID) -> tuple[bytes, str]:
    """The status as the JSON a dashboard gets, and its strong ETag (the same bytes for
    `/status` and the events stream's `status` events). Keys sorted: the same figures give
    the same bytes, whatever order the counter rows come back in."""
    body = IncidentStatusView.model_validate(incident_status(session, incident_id)).model_dump(
        mode="json"
    )
    payload = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return payload, strong_etag(payload)


def _read_document(factory: sessionmaker[Session], incident_id: uuid.UUID) -> tuple[bytes, str]:
    with session_scope(factory) as session:
        return status_document(session, incident_id)


class StatusCache:
    """The status document of each incident, kept `ttl` seconds in this process.

    Dashboards poll all day, many at once: within `ttl` every poll of an incident (a 304
    most of the time) is answered from this dictionary, in the event loop, without a
    thread or a database connection. When the document expires, the first poll reads it
    again and the polls that arrive meanwhile wait for that same read (one read per
    incident per `ttl`, however many poll). What a poll shows is at most `ttl` seconds old.
    `ttl` 0 turns it off (every poll reads).
    """

    MAX_INCIDENTS = 1000  # watched at once; the oldest entry goes first beyond that

    def __init__(self, ttl: float, clock: Clock = SYSTEM) -> None:
        self.ttl = ttl
        self.clock = clock
        # Used from the serving event loop only.
        self._documents: dict[uuid.UUID, tuple[float, bytes, str]] = {}
        self._reading: dict[uuid.UUID, asyncio.Future[tuple[bytes, str]]] = {}

    def peek(self, incident_id: uuid.UUID) -> tuple[bytes, str] | None:
        """The document if this process holds it and it is fresh, else None."""
        cached = self._documents.get(incident_id)
        if cached is None or cached[0] <= self.clock.monotonic():
            return None
        return cached[1], cached[2]

    async def document(
        self, factory: sessionmaker[Session], incident_id: uuid.UUID
    ) -> tuple[bytes, str]:
        if self.ttl <= 0:
            return await run_in_threadpool(_read_document, factory, incident_id)
        cached = self.peek(incident_id)
        if cached is not None:
            return cached
        reading = self._reading.get(incident_id)
        if reading is None or reading.get_loop() is not asyncio.get_running_loop():
            reading = asyncio.ensure_future(self._read(factory, incident_id))
            self._reading[incident_id] = reading
            reading.add_done_callback(partial(self._read_done, incident_id))
        # Shielded: a poller that hangs up does not cancel the read the others wait for.
        return await asyncio.shield(reading)

    async def _read(
        self, factory: sessionmaker[Session], incident_id: uuid.UUID
    ) -> tuple[bytes, str]:
        started = self.clock.monotonic()
        payload, etag = await run_in_threadpool(_read_document, factory, incident_id)
        if len(self._documents) >= self.MAX_INCIDENTS and incident_id not in self._documents:
            oldest = min(self._documents, key=lambda key: self._documents[key][0])
            del self._documents[oldest]
        self._documents[incident_id] = (started + self.ttl, payload, etag)
        return payload, etag

    def _read_done(self, incident_id: uuid.UUID, reading: asyncio.Future[Any]) -> None:
        if self._reading.get(incident_id) is reading:
            del self._reading[incident_id]
        if not reading.cancelled():
            reading.exception()  # retrieved, even if every poller has gone (e.g. a 404)


def _member_groups(
    session: Session, incident_id: uuid.UUID, column: Any
) -> dict[str, dict[str, int]]:
    """Funnel per member attribute: members targeted, reached (a sent delivery), failed (a
    failed delivery and none sent), answered (a current answer)."""
    sent = select(Delivery.member_id).where(
        Delivery.incident_id == incident_id, Delivery.status == DeliveryStatus.SENT
    )
    queries = {
        "targeted": select(column, func.count())
        .select_from(IncidentTarget)
        .join(Member, Member.id == IncidentTarget.member_id)
        .where(IncidentTarget.incident_id == incident_id),
        "sent": select(column, func.count(Member.id.distinct()))
        .select_from(Delivery)
        .join(Member, Member.id == Delivery.member_id)
        .where(Delivery.incident_id == incident_id, Delivery.status == DeliveryStatus.SENT),
        "failed": select(column, func.count(Member.id.distinct()))
        .select_from(Delivery)
        .join(Member, Member.id == Delivery.member_id)
        .where(
            Delivery.incident_id == incident_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.member_id.not_in(sent),
        ),
        "answered": select(column, func.count())
        .select_from(CurrentAck)
        .join(Member, Member.id == CurrentAck.member_id)
        .where(CurrentAck.incident_id == incident_id),
    }
    return _run(session, queries)


def _delivery_groups(
    session: Session, incident_id: uuid.UUID, by: Literal["channel", "language"]
) -> dict[str, dict[str, int]]:
    """Funnel per channel or per language a member was sent: members with a delivery in the
    group, with one sent, with one failed and none sent, and members whose current answer
    came through a link of the group."""
    column = getattr(Delivery, by)
    other = aliased(Delivery)
    also_sent = exists().where(
        other.incident_id == incident_id,
        other.member_id == Delivery.member_id,
        getattr(other, by) == column,
        other.status == DeliveryStatus.SENT,
    )
    members = func.count(Delivery.member_id.distinct())
    mine: ColumnElement[bool] = Delivery.incident_id == incident_id
    queries = {
        "targeted": select(column, members).where(mine),
        "sent": select(column, members).where(mine, Delivery.status == DeliveryStatus.SENT),
        "failed": select(column, members).where(
            and_(mine, Delivery.status == DeliveryStatus.FAILED, ~also_sent)
        ),
        "answered": select(getattr(Ack, by), func.count())
        .select_from(CurrentAck)
        .join(Ack, Ack.id == CurrentAck.ack_id)
        .where(CurrentAck.incident_id == incident_id),
    }
    return _run(session, queries)


def _run(session: Session, queries: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Each query selects (group, count); grouped by its first column."""
    groups: dict[str, dict[str, int]] = {}
    for stage, query in queries.items():
        for group, count in session.execute(query.group_by(query.selected_columns[0])):
            entry = groups.setdefault(
                str(group), {"targeted": 0, "sent": 0, "failed": 0, "answered": 0}
            )
            entry[stage] = count
    return groups


def coverage(session: Session, incident_id: uuid.UUID, by: CoverageBy) -> dict[str, Any]:
    """The funnel targeted → sent → failed → answered per group, counted in members.

    Unlike the status, this runs four GROUP BY queries over the incident's own rows
    (targets, deliveries, current answers): its cost grows with the incident's audience,
    on the `incident_id` indexes, and not with the rest of the database.
    """
    get_incident(session, incident_id)
    if by == "network":
        groups = _member_groups(session, incident_id, Member.network)
    elif by == "country":
        groups = _member_groups(session, incident_id, Member.country)
    else:
        groups = _delivery_groups(session, incident_id, by)
    return {
        "id": incident_id,
        "by": by,
        "groups": [{"group": name, **groups[name]} for name in sorted(groups)],
    }
