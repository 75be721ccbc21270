"""Writing a briefing version and who it goes to: the version row, its targets and ledger
rows (set-based, INSERT … SELECT over `members`), the unsent rows it retires, its dispatch
after commit, and the standard stand-down and cancellation notices."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.acks.quotas import Segment, count_quota_targets
from app.db import on_commit
from app.deliveries import ledger
from app.deliveries.content import choose_language, has_language
from app.deliveries.quiet_hours import DEFERRABLE_SEVERITIES, first_attempt_at
from app.incidents.audience import REACHES
from app.models import Briefing, Delivery, Incident, IncidentTarget, Member
from app.models.base import UTCDateTime, utcnow
from app.principal import Principal
from app.vocabulary import BriefingKind, DeliveryStatus

# Called after commit with the id of a briefing version whose deliveries should start.
Dispatcher = Callable[[int], None]


# The notice sent on resolve/cancel when the operator gives no text.
STANDARD_END: dict[str, dict[str, tuple[str, str]]] = {
    BriefingKind.RESOLVED: {
        "en": (
            "Stand-down",
            "The incident is over. Thank you for your engagement: no further action is needed.",
        ),
        "fr": (
            "Fin d'alerte",
            "L'incident est terminé. Merci de votre engagement : "
            "aucune autre action n'est nécessaire.",
        ),
        "ar": ("إنهاء التنبيه", "انتهى الحادث. شكراً لالتزامكم، لا حاجة لأي إجراء آخر."),
    },
    BriefingKind.CANCELLED: {
        "en": ("Cancelled", "This alert is cancelled. Please disregard the earlier briefing."),
        "fr": ("Annulé", "Cette alerte est annulée. Merci de ne pas tenir compte du briefing."),
        "ar": ("إلغاء", "تم إلغاء هذا التنبيه. يرجى تجاهل الإحاطة السابقة."),
    },
}


def add_briefing(
    session: Session,
    incident: Incident,
    *,
    kind: str,
    content: dict[str, Any],
    actor: Principal | None,
    now: datetime,
) -> Briefing:
    latest = session.scalar(
        select(func.max(Briefing.version)).where(Briefing.incident_id == incident.id)
    )
    briefing = Briefing(
        incident_id=incident.id,
        version=(latest or 0) + 1,
        kind=kind,
        languages=list(content),
        content=content,
        created_by_key_id=actor.key_id if actor else None,
        created_at=now,
    )
    session.add(briefing)
    session.flush()
    return briefing


def add_follow_up_briefing(session: Session, incident: Incident, *, kind: str) -> Briefing:
    """A reminder or escalation version: the latest briefing's text, sent again."""
    latest = session.scalar(
        select(Briefing)
        .where(
            Briefing.incident_id == incident.id,
            Briefing.kind.in_(("declared", "updated")),
        )
        .order_by(Briefing.version.desc())
        .limit(1)
    )
    assert latest is not None  # every incident has its declaration
    return add_briefing(
        session, incident, kind=kind, content=latest.content, actor=None, now=utcnow()
    )


def dispatch_after_commit(session: Session, briefing: Briefing, dispatch: Dispatcher) -> None:
    briefing_id = briefing.id
    on_commit(session, lambda: dispatch(briefing_id))


def retire_unsent(session: Session, incident: Incident, *, to_status: str, reason: str) -> int:
    """Earlier versions not yet sent are not sent any more: a newer message replaces them.

    Rows a dead worker left `sending` go too. Rows in flight right now are fenced by the
    versions' state instead: a claim never takes them again, and a failed send among them
    ends `cancelled` / `superseded` rather than `retrying` (see `ledger.fates`).
    """
    now = utcnow()
    changed = 0
    ours = Delivery.incident_id == incident.id
    for from_status, where in (
        (DeliveryStatus.PENDING, ours),
        (DeliveryStatus.RETRYING, ours),
        (DeliveryStatus.SENDING, and_(ours, Delivery.lease_until < ledger.db_time(session))),
    ):
        changed += len(
            ledger.transition(
                session,
                where=where,
                from_status=from_status,
                to_status=to_status,
                values={"last_error": reason, "lease_until": None},
                now=now,
            )
        )
    return changed


def supersede_versions(session: Session, incident: Incident, now: datetime) -> None:
    """Every version sent so far is replaced by the one being written."""
    session.execute(
        update(Briefing)
        .where(Briefing.incident_id == incident.id, Briefing.superseded_at.is_(None))
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )


def _segments(session: Session, condition: ColumnElement[bool]) -> list[Segment]:
    languages = cast(Member.languages, Text)
    rows = session.execute(
        select(Member.network, Member.country, languages, func.count())
        .where(condition)
        .group_by(Member.network, Member.country, languages)
    )
    return [
        Segment(network, country, json.loads(text) or [], n) for network, country, text, n in rows
    ]


def add_targets(
    session: Session, incident: Incident, condition: ColumnElement[bool], now: datetime
) -> int:
    """Target the members matching `condition` (none of whom may be targeted yet) and count
    them in the quota segments. The caller counts them into `incidents.targeted`."""
    segments = _segments(session, condition)
    added = sum(s.members for s in segments)
    if added:
        rows = select(literal(incident.id, Uuid), Member.id, literal(now, UTCDateTime)).where(
            condition
        )
        session.execute(
            insert(IncidentTarget).from_select(
                ["incident_id", "member_id", "added_at"], rows, include_defaults=False
            )
        )
        count_quota_targets(session, incident, segments)
    return added


def bump_targeted(session: Session, incident_id: uuid.UUID, count: int) -> None:
    if count:
        session.execute(
            update(Incident)
            .where(Incident.id == incident_id)
            .values(targeted=Incident.targeted + count, updated_at=Incident.updated_at)
            .execution_options(synchronize_session=False)
        )


def _language_lists(
    session: Session, condition: ColumnElement[bool], briefing_languages: Sequence[str]
) -> dict[str, tuple[str, bool]]:
    """Each distinct language list of the matching members (as stored text) → the language
    it is sent and whether that is one of the member's own (False: the fallback)."""
    text = cast(Member.languages, Text)
    chosen: dict[str, tuple[str, bool]] = {}
    for listed in session.scalars(select(text).where(condition).distinct()):
        wanted = json.loads(listed) or []
        chosen[listed] = (
            choose_language(wanted, briefing_languages),
            has_language(wanted, briefing_languages),
        )
    return chosen


def language_of(
    session: Session, condition: ColumnElement[bool], briefing_languages: Sequence[str]
) -> ColumnElement[str]:
    """The CASE that picks each member's language, built from the distinct lists."""
    text = cast(Member.languages, Text)
    default = choose_language([], briefing_languages)
    by_choice: dict[str, list[str]] = {}
    for listed, (language, _) in _language_lists(session, condition, briefing_languages).items():
        if language != default:
            by_choice.setdefault(language, []).append(listed)
    if not by_choice:
        return literal(default, String)
    return case(
        *((text.in_(lists), literal(chosen, String)) for chosen, lists in by_choice.items()),
        else_=literal(default, String),
    )


def falls_back(
    session: Session, condition: ColumnElement[bool], briefing_languages: Sequence[str]
) -> ColumnElement[bool]:
    """True for members none of whose languages the briefing has."""
    text = cast(Member.languages, Text)
    lacking = [
        listed
        for listed, (_, own) in _language_lists(session, condition, briefing_languages).items()
        if not own
    ]
    if not lacking:
        return literal(False)
    return text.in_(lacking)


def first_attempt(
    session: Session, condition: ColumnElement[bool], severity: str, now: datetime
) -> ColumnElement[Any]:
    """The CASE that defers members in their quiet hours (minor and moderate only)."""
    if severity not in DEFERRABLE_SEVERITIES:
        return null()
    settings = session.execute(
        select(Member.timezone, Member.quiet_hours_start, Member.quiet_hours_end)
        .where(
            condition, Member.quiet_hours_start.is_not(None), Member.quiet_hours_end.is_not(None)
        )
        .distinct()
    )
    whens = []
    for zone, start, end in settings:
        at = first_attempt_at(now, severity, zone, start, end)
        if at is not None:
            same = and_(
                Member.timezone == zone,
                Member.quiet_hours_start == start,
                Member.quiet_hours_end == end,
            )
            whens.append((same, literal(at, UTCDateTime)))
    return case(*whens, else_=null()) if whens else null()


_DELIVERY_COLUMNS = [
    "incident_id",
    "briefing_id",
    "member_id",
    "channel",
    "status",
    "language",
    "attempts",
    "enqueue_count",
    "next_attempt_at",
    "created_at",
    "updated_at",
]


def add_deliveries(
    session: Session,
    incident: Incident,
    briefing: Briefing,
    condition: ColumnElement[bool],
    *,
    now: datetime,
) -> int:
    """Write the version's ledger rows for the members matching `condition`: one per
    channel of the incident that reaches them. One INSERT … SELECT per channel."""
    language = language_of(session, condition, briefing.languages)
    not_before = first_attempt(session, condition, incident.severity, now)
    counts: Counter[tuple[uuid.UUID, str, str]] = Counter()
    for channel in incident.channels:
        rows = select(
            literal(incident.id, Uuid),
            literal(briefing.id, BigInteger),
            Member.id,
            literal(channel, String),
            literal(DeliveryStatus.PENDING, String),
            language,
            literal(0, Integer),
            literal(0, Integer),
            not_before,
            literal(now, UTCDateTime),
            literal(now, UTCDateTime),
        ).where(condition, REACHES[channel])
        result = session.execute(
            insert(Delivery)
            .from_select(_DELIVERY_COLUMNS, rows, include_defaults=False)
            # SQLAlchemy keeps an INSERT's row count only when asked.
            .execution_options(preserve_rowcount=True)
        )
        counts[(incident.id, channel, DeliveryStatus.PENDING)] += result.rowcount  # type: ignore[attr-defined]
    ledger.bump_counters(session, counts)
    return sum(counts.values())
