"""The delivery ledger's state changes, and the counters that follow them.

Every change of status goes through `transition`, a compare-and-set `UPDATE … WHERE status
= :from RETURNING …`, so the counters move by exactly the rows that changed, on
PostgreSQL and SQLite alike, however many workers race for the same rows.

Times that workers compare with each other's (leases, due times, when a row was queued)
come from the database's clock on PostgreSQL (`db_time`): a worker whose clock is a minute
off neither steals live leases nor sits on expired ones.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Dialect,
    Float,
    Integer,
    Interval,
    Row,
    Select,
    Subquery,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from app import counters
from app.models import Briefing, Delivery, DeliveryCounter, Incident
from app.models.base import UTCDateTime, utcnow
from app.vocabulary import BriefingKind, DeliveryStatus, IncidentStatus

ENDED_INCIDENT = (IncidentStatus.RESOLVED, IncidentStatus.CANCELLED)
# Versions that are sent after their incident ended: the stand-down and the cancellation.
END_KINDS = (BriefingKind.RESOLVED, BriefingKind.CANCELLED)
# Rows per claim or renewal statement: a batch of up to 1,000 rows is claimed in one
# (bench/outcomes.py: a claim of 1,000 rows costs half the CPU per row of one of 250, and
# 2,000 no less than 1,000).
_CHUNK = 1000
# The sweeper waits requeue_after, then 2×, 4×, 8× as long before it counts a queued row's
# message as lost again (a long queue is not a lost queue).
_REQUEUE_DOUBLINGS = 4


def db_time(session: Session, offset: timedelta = timedelta(0)) -> ColumnElement[datetime]:
    """Now (plus `offset`) by the database's clock on PostgreSQL; SQLite is a file on one
    machine, whose clock is this process's."""
    if session.get_bind().dialect.name == "postgresql":
        return func.statement_timestamp() + literal(offset, Interval())
    return literal(utcnow() + offset, UTCDateTime())


@dataclass(frozen=True)
class Changed:
    """A row that a transition changed, as it is after the change."""

    id: int
    incident_id: uuid.UUID
    channel: str
    attempts: int


def bump_counters(session: Session, deltas: Counter[tuple[uuid.UUID, str, str]]) -> None:
    """Apply (incident, channel, status) → delta to the counters, as upserts."""
    now = utcnow()
    rows = [
        {"incident_id": i, "channel": c, "status": s, "count": d, "updated_at": now}
        for (i, c, s), d in deltas.items()
        if d
    ]
    counters.add(
        session,
        DeliveryCounter,
        rows,
        keys=("incident_id", "channel", "status"),
        sums=("count",),
        latest=("updated_at",),
    )


def count_new(session: Session, rows: Iterable[tuple[uuid.UUID, str, str]]) -> None:
    """Count freshly inserted deliveries: (incident, channel, status) per row."""
    bump_counters(session, Counter(rows))


def transition(
    session: Session,
    *,
    where: ColumnElement[bool],
    from_status: str,
    to_status: str,
    values: dict[str, Any],
    now: datetime,
) -> list[Changed]:
    """Move the rows matching `where` that are in `from_status` to `to_status`."""
    statement = (
        update(Delivery)
        .where(where, Delivery.status == from_status)
        .values(status=to_status, updated_at=now, **values)
        .returning(Delivery.id, Delivery.incident_id, Delivery.channel, Delivery.attempts)
        .execution_options(synchronize_session=False)
    )
    changed = [Changed(*row) for row in session.execute(statement)]
    deltas: Counter[tuple[uuid.UUID, str, str]] = Counter()
    for row in changed:
        deltas[(row.incident_id, row.channel, from_status)] -= 1
        deltas[(row.incident_id, row.channel, to_status)] += 1
    bump_counters(session, deltas)
    return changed


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def still_wanted() -> ColumnElement[bool]:
    """The row's version is still the one to send: no newer version replaced it, and its
    incident has not ended (unless the row is the end notice itself)."""
    return exists().where(
        Briefing.id == Delivery.briefing_id,
        Briefing.superseded_at.is_(None),
        Incident.id == Briefing.incident_id,
        or_(Incident.status.not_in(ENDED_INCIDENT), Briefing.kind.in_(END_KINDS)),
    )


@dataclass(frozen=True)
class Claimed:
    """A row a claim took, with what a sender needs to know of it."""

    id: int
    incident_id: uuid.UUID
    briefing_id: int
    member_id: uuid.UUID | None
    channel: str
    language: str
    attempts: int
    created_at: datetime


def claim(
    session: Session, ids: Sequence[int], *, lease: timedelta, max_attempts: int
) -> list[Claimed]:
    """Claim the due rows among `ids` for sending: compare-and-set to `sending`, one more
    attempt, a lease. Rows another worker holds (unexpired lease), rows not yet due, final
    rows and rows no longer wanted (ended incident, superseded version: checked in this
    very statement, so a cancel that committed first always wins) are left alone, so a
    task delivered twice sends nothing twice.

    Set-based, and the update returns what the sender needs of each row. On PostgreSQL one
    statement per chunk: the claimable rows are picked and locked (skipping rows another
    claim holds) with their status before the claim, which the counters need; SQLite's
    RETURNING cannot see that, so there it is one statement per status before.
    """
    now = db_time(session)
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    claimable = and_(
        Delivery.attempts < max_attempts,
        or_(
            and_(Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)), due),
            # A lease that ran out: the worker died or hung mid-send. Take the row over.
            and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now),
        ),
        still_wanted(),
    )
    claimed: list[Claimed] = []
    deltas: Counter[tuple[uuid.UUID, str, str]] = Counter()
    values = {
        "status": DeliveryStatus.SENDING,
        "attempts": Delivery.attempts + 1,
        "lease_until": db_time(session, lease),
        # Claimed: no message of the broker is needed for the row any more.
        "enqueued_at": None,
        "enqueue_count": 0,
        "updated_at": utcnow(),
    }
    returned = (
        Delivery.id,
        Delivery.incident_id,
        Delivery.briefing_id,
        Delivery.member_id,
        Delivery.channel,
        Delivery.language,
        Delivery.attempts,
        Delivery.created_at,
    )
    postgresql = session.get_bind().dialect.name == "postgresql"
    for chunk in _chunks(ids):
        if postgresql:
            before = (
                select(Delivery.id, Delivery.status)
                .where(Delivery.id.in_(chunk), claimable)
                .with_for_update(skip_locked=True)
                .cte("claimable")
            )
            statements = [
                update(Delivery)
                .where(Delivery.id == before.c.id)
                .values(**values)
                .returning(*returned, before.c.status)
            ]
        else:
            # SQLite's RETURNING sees only the updated row: one statement per status
            # before (cheap in-process; SQLite has one writer, so nothing to skip).
            statements = [
                update(Delivery)
                .where(Delivery.id.in_(chunk), claimable, Delivery.status == from_status)
                .values(**values)
                .returning(*returned, literal(from_status))
                for from_status in (
                    DeliveryStatus.PENDING,
                    DeliveryStatus.RETRYING,
                    DeliveryStatus.SENDING,
                )
            ]
        for statement in statements:
            for row in session.execute(statement.execution_options(synchronize_session=False)):
                *fields, from_status = row
                claimed.append(Claimed(*fields))
                deltas[(row.incident_id, row.channel, from_status)] -= 1
                deltas[(row.incident_id, row.channel, DeliveryStatus.SENDING)] += 1
    bump_counters(session, deltas)
    return claimed


def renew(session: Session, pairs: Sequence[tuple[int, int]], *, lease: timedelta) -> int:
    """Extend the leases of rows we still hold (a live batch does this every third of a
    lease, so a dead worker's rows are free again within one lease)."""
    renewed = 0
    for start in range(0, len(pairs), _CHUNK):
        result = session.execute(
            update(Delivery)
            .where(fenced(pairs[start : start + _CHUNK]), Delivery.status == DeliveryStatus.SENDING)
            .values(lease_until=db_time(session, lease))
            .execution_options(synchronize_session=False)
        )
        renewed += result.rowcount  # type: ignore[attr-defined]
    return renewed


def _fates() -> CTE:
    """(briefing id, fate) of the versions in `:briefing_ids`: `cancelled` (the incident
    ended; an end notice itself is still sent), `superseded` (a newer version), or NULL
    (still to be sent). The one statement of that rule, read alone (`fates`) or inside the
    outcome write."""
    fate = case(
        (
            and_(Incident.status.in_(ENDED_INCIDENT), Briefing.kind.not_in(END_KINDS)),
            DeliveryStatus.CANCELLED,
        ),
        (Briefing.superseded_at.is_not(None), DeliveryStatus.SUPERSEDED),
        else_=null(),
    )
    return (
        select(Briefing.id.label("briefing_id"), fate.label("fate"))
        .join(Incident, Incident.id == Briefing.incident_id)
        .where(Briefing.id.in_(bindparam("briefing_ids", expanding=True)))
        .cte("fates")
    )


@functools.cache
def _fates_statement() -> Select[tuple[int, str]]:
    known = _fates()
    return select(known.c.briefing_id, known.c.fate).where(known.c.fate.is_not(None))


def fates(session: Session, briefing_ids: Iterable[int]) -> dict[int, str]:
    """Of these briefing versions, those no longer to be sent, with the status their open
    rows end in: `cancelled` (the incident ended) or `superseded` (a newer version)."""
    rows = session.connection().execute(
        _fates_statement(), {"briefing_ids": sorted(set(briefing_ids))}
    )
    return {row.briefing_id: row.fate for row in rows}


def fenced(pairs: Sequence[tuple[int, int]]) -> ColumnElement[bool]:
    """Rows still held by us: same id and same attempt number as when we claimed them."""
    return tuple_(Delivery.id, Delivery.attempts).in_(pairs)


@dataclass(frozen=True)
class Outcome:
    """A finished send: the status its row takes if its version is still wanted (`sent`,
    `retrying` after `retry_in`, `failed`) and the error to keep."""

    delivery_id: int
    attempt: int
    briefing_id: int
    status: str
    error: str | None = None
    retry_in: timedelta | None = None


@dataclass(frozen=True)
class Recorded:
    """What an outcome write changed: row id → the status it now has (a row missing lost
    its lease to another attempt), and the versions known to be no longer wanted."""

    statuses: dict[int, str]
    fates: dict[int, str]


def record_outcomes(
    session: Session,
    outcomes: Sequence[Outcome],
    *,
    briefing_ids: Iterable[int],
    now: datetime,
    want_fates: bool = True,
) -> Recorded:
    """Write a flush of outcomes under our leases (same id, same attempt, still `sending`)
    and move the counters by exactly the rows that changed.

    A failure whose version was cancelled or replaced meanwhile ends `cancelled` or
    `superseded`, never `retrying`: the fate is read in this very statement (`_fates`), so
    a cancel that committed before it always wins. A success stays `sent`.

    PostgreSQL: one statement (the outcomes arrive as arrays and are `unnest`ed; the
    update and the counter upsert are CTEs; the fates of `briefing_ids` come back with the
    changed rows). SQLite has no data-modifying CTE: one `UPDATE … FROM json_each(…)`
    and one counter upsert, plus the fates when `want_fates`. The statements are built
    once per process: a flush only binds its values.
    """
    ids = sorted(set(briefing_ids))
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # Not named like a column: an UPDATE takes a parameter named like a column of
        # its table as that column's new value.
        params: dict[str, Any] = {
            "briefing_ids": ids,
            "given_ids": [o.delivery_id for o in outcomes],
            "given_attempts": [o.attempt for o in outcomes],
            "given_versions": [o.briefing_id for o in outcomes],
            "given_statuses": [o.status for o in outcomes],
            "given_errors": [o.error for o in outcomes],
            "given_retry_in": [
                None if o.retry_in is None else o.retry_in.total_seconds() for o in outcomes
            ],
            "now": now,
        }
        statuses: dict[int, str] = {}
        known: dict[int, str] = {}
        for what, key, status in connection.execute(_outcomes_postgresql(), params):
            (statuses if what == "row" else known)[key] = status
        return Recorded(statuses, known)
    known = fates(session, ids) if want_fates else {}
    if not outcomes:
        return Recorded({}, known)
    stored = _sqlite_time(connection.dialect)
    payload = json.dumps(
        [
            [
                o.delivery_id,
                o.attempt,
                o.briefing_id,
                o.status,
                o.error,
                None if o.retry_in is None else stored(utcnow() + o.retry_in),
            ]
            for o in outcomes
        ]
    )
    # pysqlite begins its (deferred) transaction only before a statement that starts with
    # INSERT, UPDATE, DELETE or REPLACE; this one starts with WITH, and would commit on its
    # own, apart from its counters (a kill in between and the counters drift).
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN")
    statuses = {}
    deltas: Counter[tuple[uuid.UUID, str, str]] = Counter()
    rows = connection.execute(
        _outcomes_sqlite(), {"payload": payload, "briefing_ids": ids, "now": now}
    )
    for row in rows:
        statuses[row.id] = row.status
        deltas[(row.incident_id, row.channel, DeliveryStatus.SENDING)] -= 1
        deltas[(row.incident_id, row.channel, row.status)] += 1
    bump_counters(session, deltas)
    return Recorded(statuses, known)


_COLUMNS = ("id", "attempt", "briefing_id", "status", "error")


def _sqlite_time(dialect: Dialect) -> Callable[[datetime], str]:
    """A time in the form SQLite stores it (the column's own bind processing)."""
    stored = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert stored is not None
    return stored


def _outcome_update(
    given: Subquery, known: CTE, *, materialized: bool
) -> ReturningUpdate[int, uuid.UUID, str, str]:
    """The update of the rows in `given` (id, attempt, briefing_id, status, error,
    next_at) still held by us, a failure taking its version's fate from `known`."""
    final = case(
        (given.c.status == DeliveryStatus.SENT, given.c.status),
        else_=func.coalesce(known.c.fate, given.c.status),
    )
    rows = (
        select(given.c.id, given.c.attempt, final.label("status"), given.c.error, given.c.next_at)
        .select_from(given.outerjoin(known, known.c.briefing_id == given.c.briefing_id))
        .cte("outcomes")
    )
    if materialized:
        # Else SQLite's planner walks every `sending` row by the status index and looks
        # each up in the flush (13 ms a row at 20,000 rows): the flush first, then by id.
        rows = rows.prefix_with("MATERIALIZED")
    retrying = rows.c.status == DeliveryStatus.RETRYING
    at = bindparam("now", type_=UTCDateTime())
    return (
        update(Delivery)
        .where(
            Delivery.id == rows.c.id,
            Delivery.attempts == rows.c.attempt,
            Delivery.status == DeliveryStatus.SENDING,
        )
        .values(
            status=rows.c.status,
            updated_at=at,
            lease_until=null(),
            last_error=rows.c.error,
            sent_at=case((rows.c.status == DeliveryStatus.SENT, at), else_=Delivery.sent_at),
            next_attempt_at=case((retrying, rows.c.next_at), else_=Delivery.next_attempt_at),
            enqueued_at=case((retrying, null()), else_=Delivery.enqueued_at),
            enqueue_count=case((retrying, 0), else_=Delivery.enqueue_count),
        )
        .returning(Delivery.id, Delivery.incident_id, Delivery.channel, Delivery.status)
    )


@functools.cache
def _outcomes_sqlite() -> ReturningUpdate[int, uuid.UUID, str, str]:
    # One JSON parameter, however many rows (no bound-parameter limit to mind); due
    # times arrive already in the column's stored form.
    items = func.json_each(bindparam("payload", type_=Text())).table_valued("value")
    given = select(
        *(
            func.json_extract(items.c.value, literal_column(f"'$[{index}]'")).label(name)
            for index, name in enumerate((*_COLUMNS, "next_at"))
        )
    ).subquery("given")
    return _outcome_update(given, _fates(), materialized=True)


@functools.cache
def _outcomes_postgresql() -> CompoundSelect[str, int, str]:
    arrays = (
        ("given_ids", BigInteger()),
        ("given_attempts", Integer()),
        ("given_versions", BigInteger()),
        ("given_statuses", Text()),
        ("given_errors", Text()),
        ("given_retry_in", Float()),
    )
    unnested = (
        func.unnest(
            *(cast(bindparam(name, type_=ARRAY(kind)), ARRAY(kind)) for name, kind in arrays)
        )
        .table_valued(*_COLUMNS, "retry_in")
        .render_derived(name="given")
    )
    # Due times by the database's clock, as everywhere on PostgreSQL (`db_time`).
    next_at = func.statement_timestamp() + literal_column("interval '1 second'") * (
        unnested.c.retry_in
    )
    given = select(*(unnested.c[name] for name in _COLUMNS), next_at.label("next_at")).subquery()
    known = _fates()
    changed = _outcome_update(given, known, materialized=False).cte("changed")
    moved = union_all(
        select(
            changed.c.incident_id, changed.c.channel, changed.c.status, func.count().label("n")
        ).group_by(changed.c.incident_id, changed.c.channel, changed.c.status),
        select(
            changed.c.incident_id, changed.c.channel, literal(DeliveryStatus.SENDING), -func.count()
        ).group_by(changed.c.incident_id, changed.c.channel),
    ).subquery("moved")
    # Sorted by key (bytewise, as `counters.add` sorts): concurrent writers lock counter
    # rows in one order.
    summed = (
        select(
            moved.c.incident_id,
            moved.c.channel,
            moved.c.status,
            cast(func.sum(moved.c.n), Integer),
            bindparam("now", type_=UTCDateTime()),
        )
        .group_by(moved.c.incident_id, moved.c.channel, moved.c.status)
        .order_by(moved.c.incident_id, moved.c.channel.collate("C"), moved.c.status.collate("C"))
    )
    insert = pg_insert(DeliveryCounter).from_select(
        ["incident_id", "channel", "status", "count", "updated_at"], summed
    )
    bumped = (
        insert.on_conflict_do_update(
            index_elements=["incident_id", "channel", "status"],
            set_={
                "count": DeliveryCounter.count + insert.excluded.count,
                "updated_at": insert.excluded.updated_at,
            },
        )
        .returning(DeliveryCounter.count)
        .cte("bumped")
    )
    # A data-modifying CTE runs to completion whether or not the query reads it.
    return union_all(
        select(literal("row").label("what"), changed.c.id, changed.c.status).add_cte(bumped),
        select(literal("fate"), known.c.briefing_id, known.c.fate).where(known.c.fate.is_not(None)),
    )


def finish_one(
    session: Session,
    *,
    delivery_id: int,
    attempt: int,
    to_status: str,
    now: datetime,
    error: str | None,
    retry_in: timedelta | None = None,
) -> bool:
    """Write one non-success outcome under our lease. False if the lease was lost."""
    values: dict[str, Any] = {"lease_until": None, "last_error": error}
    if to_status == DeliveryStatus.RETRYING:
        assert retry_in is not None
        values.update(next_attempt_at=db_time(session, retry_in), enqueued_at=None, enqueue_count=0)
    changed = transition(
        session,
        where=fenced([(delivery_id, attempt)]),
        from_status=DeliveryStatus.SENDING,
        to_status=to_status,
        values=values,
        now=now,
    )
    return bool(changed)


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base·2^(attempt-1), never above cap."""
    delay: float = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


def take_due(
    session: Session,
    *,
    requeue_after: timedelta,
    limit: int,
    briefing_id: int | None = None,
    after_id: int | None = None,
) -> list[Row[tuple[int, str, int]]]:
    """Mark as queued, and return as (id, channel, briefing id), the rows a sender should
    look at now: new pending rows, queued rows whose message the broker can have lost,
    retries that are due, and rows whose lease ran out.

    One page: at most `limit` rows, in id order, after `after_id` (the last id of the
    previous page), so a caller holds one page at a time and each page's index scan
    starts where the last one ended instead of walking the rows already queued again.

    A queued row counts as lost `requeue_after` after it was queued, then twice, four
    times, eight times as long after each re-queue: a queue that is merely long (100,000
    members) is not refilled with copies every `requeue_after`. One conditional UPDATE: if
    a sweep and a dispatch race for the same rows, the second re-checks the condition on
    the locked rows and takes none of them.
    """
    now = db_time(session)
    maybe_lost: list[ColumnElement[bool]] = [Delivery.enqueued_at.is_(None)]
    for doubling in range(_REQUEUE_DOUBLINGS + 1):
        times_queued = (
            Delivery.enqueue_count <= 1
            if doubling == 0
            else Delivery.enqueue_count >= doubling + 1
            if doubling == _REQUEUE_DOUBLINGS
            else Delivery.enqueue_count == doubling + 1
        )
        waited = db_time(session, -requeue_after * 2**doubling)
        maybe_lost.append(and_(times_queued, Delivery.enqueued_at < waited))
    not_recently_queued = or_(*maybe_lost)
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    condition = and_(
        or_(
            and_(Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)), due),
            and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now),
        ),
        not_recently_queued,
        still_wanted(),
    )
    candidates = select(Delivery.id).where(condition)
    if briefing_id is not None:
        candidates = candidates.where(Delivery.briefing_id == briefing_id)
    if after_id is not None:
        candidates = candidates.where(Delivery.id > after_id)
    candidates = candidates.order_by(Delivery.id).limit(limit)
    statement = (
        update(Delivery)
        .where(Delivery.id.in_(candidates.scalar_subquery()), condition)
        .values(enqueued_at=now, enqueue_count=Delivery.enqueue_count + 1)
        .returning(Delivery.id, Delivery.channel, Delivery.briefing_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.execute(statement), key=lambda row: row.id)


def retire_unwanted(session: Session, *, since: datetime) -> int:
    """Open rows of versions no longer wanted end `cancelled` or `superseded`: rows that a
    send in flight at the cancel or the update left behind, or that a claim raced past.
    Only incidents ended, and versions superseded, after `since` are looked at (index
    lookups per incident and per version: cheap while a fan-out runs)."""
    now = db_time(session)
    ended = select(Incident.id).where(
        Incident.status.in_(ENDED_INCIDENT), Incident.ended_at >= since
    )
    not_end_notice = ~exists().where(
        Briefing.id == Delivery.briefing_id, Briefing.kind.in_(END_KINDS)
    )
    superseded = select(Briefing.id).where(Briefing.superseded_at >= since)
    targets = (
        (and_(Delivery.incident_id.in_(ended), not_end_notice), DeliveryStatus.CANCELLED),
        (Delivery.briefing_id.in_(superseded), DeliveryStatus.SUPERSEDED),
    )
    changed = 0
    for where, to_status in targets:
        reason = (
            "incident ended"
            if to_status == DeliveryStatus.CANCELLED
            else "superseded by a newer version"
        )
        for from_status, extra in (
            (DeliveryStatus.PENDING, None),
            (DeliveryStatus.RETRYING, None),
            (DeliveryStatus.SENDING, Delivery.lease_until < now),
        ):
            condition = where if extra is None else and_(where, extra)
            changed += len(
                transition(
                    session,
                    where=condition,
                    from_status=from_status,
                    to_status=to_status,
                    values={"lease_until": None, "last_error": reason},
                    now=utcnow(),
                )
            )
    return changed


def fail_exhausted_leases(session: Session, *, max_attempts: int) -> int:
    """Rows lost mid-send on their last allowed attempt: no attempt is left to take them
    over, so they end as failed rather than stay `sending` forever."""
    now = utcnow()
    changed = transition(
        session,
        where=and_(Delivery.lease_until < db_time(session), Delivery.attempts >= max_attempts),
        from_status=DeliveryStatus.SENDING,
        to_status=DeliveryStatus.FAILED,
        values={"lease_until": None, "last_error": "worker lost during the last attempt"},
        now=now,
    )
    return len(changed)
