"""Answers to incidents: recorded from a signed token, one current answer per member, the
whole history kept; each answer counted into the coverage quotas (app/acks/quotas.py)."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app import counters, timeline
from app.acks.quotas import in_segment
from app.deliveries.tokens import AckTokenSigner, InvalidToken
from app.errors import FieldProblem, InvalidInput, NotFound
from app.models import (
    Ack,
    AnswerCounter,
    AnswerDelayCounter,
    Briefing,
    CurrentAck,
    Delivery,
    Incident,
    Member,
    QuotaCounter,
)
from app.models.base import utcnow
from app.vocabulary import TimelineEventKind

MAX_COMMENT = 2000


class LinkNotValid(NotFound):
    """Tampered, expired, unknown or orphaned: the caller is told nothing more."""


@dataclass(frozen=True)
class AckView:
    """What the ack page shows: the incident, the allowed answers, the current answer, and
    the heading: the subject of the member's briefing in their language (the incident's
    title is the operators' own wording, often in another language)."""

    delivery: Delivery
    incident: Incident
    version: int
    language: str
    current: str | None
    subject: str


def _claims(signer: AckTokenSigner, token: str) -> int:
    if len(token) > 200:
        raise LinkNotValid("link not valid")
    try:
        return signer.verify(token).delivery_id
    except InvalidToken as exc:
        raise LinkNotValid("link not valid") from exc


def view(session: Session, signer: AckTokenSigner, token: str) -> AckView:
    """Read-only: what the page needs. Changes nothing (mail scanners follow links)."""
    delivery = session.get(Delivery, _claims(signer, token))
    if delivery is None or delivery.member_id is None:
        raise LinkNotValid("link not valid")
    incident = session.get(Incident, delivery.incident_id)
    briefing = session.execute(
        select(Briefing.version, Briefing.content).where(Briefing.id == delivery.briefing_id)
    ).first()
    if incident is None or briefing is None:
        raise LinkNotValid("link not valid")
    entry = briefing.content.get(delivery.language) or {}
    current = session.scalar(
        select(CurrentAck.response).where(
            CurrentAck.incident_id == incident.id, CurrentAck.member_id == delivery.member_id
        )
    )
    return AckView(
        delivery,
        incident,
        briefing.version,
        delivery.language,
        current,
        subject=entry.get("subject") or incident.title,
    )


def record(
    session: Session,
    signer: AckTokenSigner,
    token: str,
    *,
    response: str,
    comment: str | None,
    route: str,
    now: datetime | None = None,
) -> tuple[Ack, AckView]:
    """Record an answer. Repeating it is harmless: the history grows, the current answer
    is the latest. An answer after the incident ended is kept and flagged late."""
    seen = view(session, signer, token)
    if response not in seen.incident.responses:
        raise InvalidInput(
            f"response must be one of {', '.join(seen.incident.responses)}",
            errors=[FieldProblem(field="response", reason="not an answer this incident allows")],
        )
    if comment is not None and len(comment) > MAX_COMMENT:
        raise InvalidInput(
            f"comment is longer than {MAX_COMMENT} characters",
            errors=[FieldProblem(field="comment", reason=f"at most {MAX_COMMENT} characters")],
        )
    now = now or utcnow()
    delivery = seen.delivery
    assert delivery.member_id is not None
    # The incident row first (lock order, see app.timeline): the answer's place
    # in the events stream.
    seq = timeline.take_seq(session, seen.incident.id)
    reference_time = delivery.sent_at or delivery.created_at
    ack = Ack(
        incident_id=seen.incident.id,
        member_id=delivery.member_id,
        delivery_id=delivery.id,
        response=response,
        comment=comment or None,
        route=route,
        channel=delivery.channel,
        briefing_version=seen.version,
        language=seen.language,
        answered_at=now,
        delay_seconds=max((now - reference_time).total_seconds(), 0.0),
        late=seen.incident.ended_at is not None and now >= seen.incident.ended_at,
        event_seq=seq,
    )
    session.add(ack)
    session.flush()
    _make_current(session, ack, seen.incident)
    return ack, seen


def _make_current(session: Session, ack: Ack, incident: Incident) -> None:
    """Make `ack` the member's current answer unless a later one is already current
    (concurrent answers converge on the highest id), and move the answer counters by
    exactly what changed: the row is inserted, or changed under its row lock."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    key = (CurrentAck.incident_id == ack.incident_id, CurrentAck.member_id == ack.member_id)
    inserted = session.execute(
        insert(CurrentAck)
        .values(
            incident_id=ack.incident_id,
            member_id=ack.member_id,
            ack_id=ack.id,
            response=ack.response,
            answered_at=ack.answered_at,
            first_answered_at=ack.answered_at,
        )
        .on_conflict_do_nothing(index_elements=[CurrentAck.incident_id, CurrentAck.member_id])
        .returning(CurrentAck.ack_id)
    ).first()
    if inserted is not None:
        _count_answer(session, incident, ack, previous=None, first=True)
        return
    current = session.execute(
        select(CurrentAck.ack_id, CurrentAck.response).where(*key).with_for_update()
    ).one()
    if current.ack_id >= ack.id:
        return
    session.execute(
        update(CurrentAck)
        .where(*key)
        .values(ack_id=ack.id, response=ack.response, answered_at=ack.answered_at)
        .execution_options(synchronize_session=False)
    )
    if current.response != ack.response:
        _count_answer(session, incident, ack, previous=current.response, first=False)


def delay_bucket(seconds: float) -> int:
    """The histogram bucket of a delay: 0 under a second, else b with
    2**((b-1)/8) <= seconds < 2**(b/8) (each bucket about 9% wide)."""
    return 0 if seconds < 1 else math.floor(8 * math.log2(seconds)) + 1


def bucket_seconds(bucket: int) -> float:
    """A bucket's representative delay: its geometric middle (within ±4.5% of any delay
    in it)."""
    return 0.5 if bucket == 0 else float(2 ** ((bucket - 0.5) / 8))


def _count_answer(
    session: Session, incident: Incident, ack: Ack, *, previous: str | None, first: bool
) -> None:
    now = utcnow()
    deltas: Counter[str] = Counter({ack.response: 1})
    if previous is not None:
        deltas[previous] -= 1
    counters.add(
        session,
        AnswerCounter,
        [
            {"incident_id": incident.id, "response": r, "count": d, "updated_at": now}
            for r, d in deltas.items()
        ],
        keys=("incident_id", "response"),
        sums=("count",),
        latest=("updated_at",),
    )
    if first:
        delay = max((ack.answered_at - incident.declared_at).total_seconds(), 0.0)
        counters.add(
            session,
            AnswerDelayCounter,
            [{"incident_id": incident.id, "bucket": delay_bucket(delay), "count": 1}],
            keys=("incident_id", "bucket"),
            sums=("count",),
        )
    quotas = incident.followup.get("quotas", [])
    if not quotas:
        return
    member = session.execute(
        select(Member.network, Member.country, Member.languages).where(Member.id == ack.member_id)
    ).one()
    rows: list[dict[str, Any]] = []
    for index, quota in enumerate(quotas):
        if not in_segment(quota, member.network, member.country, member.languages):
            continue
        change = (ack.response in quota["responses"]) - (previous in quota["responses"])
        if change:
            rows.append(
                {
                    "incident_id": incident.id,
                    "quota_index": index,
                    "targeted": 0,
                    "answered": change,
                }
            )
    counters.add(
        session, QuotaCounter, rows, keys=("incident_id", "quota_index"), sums=("answered",)
    )
    _note_quota_crossings(session, incident, {row["quota_index"]: row["answered"] for row in rows})


def _note_quota_crossings(session: Session, incident: Incident, changes: dict[int, int]) -> None:
    """A quota that this answer made met (or unmet again) goes on the timeline. The counter
    rows are locked by the upsert above, so exactly one answer sees each crossing."""
    if not changes:
        return
    quotas = incident.followup.get("quotas", [])
    for index, answered in session.execute(
        select(QuotaCounter.quota_index, QuotaCounter.answered).where(
            QuotaCounter.incident_id == incident.id,
            QuotaCounter.quota_index.in_(sorted(changes)),
        )
    ):
        wanted = int(quotas[index]["min"])
        before = answered - changes[index]
        if before < wanted <= answered:
            kind = TimelineEventKind.QUOTA_MET
        elif answered < wanted <= before:
            kind = TimelineEventKind.QUOTA_UNMET
        else:
            continue
        timeline.add(
            session,
            incident.id,
            kind,
            detail={"quota_index": index, "answered": answered, "min": wanted},
        )


def list_current(
    session: Session,
    incident_id: uuid.UUID,
    *,
    response: str | None,
    network: str | None,
    country: str | None,
    language: str | None,
    limit: int,
    after: int | None,
) -> list[Row[Any]]:
    """Current answers with who gave them, in the order of their latest answer."""
    query = (
        select(CurrentAck, Ack, Member.name, Member.network, Member.country)
        .join(Ack, Ack.id == CurrentAck.ack_id)
        .join(Member, Member.id == CurrentAck.member_id)
        .where(CurrentAck.incident_id == incident_id)
        .order_by(CurrentAck.ack_id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(CurrentAck.ack_id > after)
    if response:
        query = query.where(CurrentAck.response == response)
    if network:
        query = query.where(Member.network == network)
    if country:
        query = query.where(Member.country == country)
    if language:
        query = query.where(Ack.language == language)
    return list(session.execute(query))


def history(session: Session, incident_id: uuid.UUID, member_id: uuid.UUID) -> list[Ack]:
    return list(
        session.scalars(
            select(Ack)
            .where(Ack.incident_id == incident_id, Ack.member_id == member_id)
            .order_by(Ack.id)
        )
    )
