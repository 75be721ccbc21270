"""HTTP routes for incidents: declare, update, resolve, cancel, read, deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from app import timeline
from app.broker import api_dispatcher
from app.deps import (
    EventHubDep,
    IncidentDep,
    Operator,
    PollingViewer,
    PublisherDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StatusCacheDep,
    Viewer,
    WriteSessionDep,
)
from app.etags import etag_matches
from app.incidents import events, preview, service, templated
from app.incidents import status as status_reads
from app.incidents.briefings import Dispatcher
from app.incidents.schemas import (
    EVENT_STREAM_ITEM,
    BriefingVersion,
    CoverageView,
    DeliveryView,
    Incident,
    IncidentCreate,
    IncidentDeclaration,
    IncidentEnd,
    IncidentFilters,
    IncidentPreview,
    IncidentReject,
    IncidentStatusView,
    IncidentUpdate,
    IncidentUpdateRequest,
    TimelineEvent,
)
from app.incidents.status import CoverageBy
from app.models import Incident as IncidentRow
from app.models import Role
from app.pagination import Page, PageDep, PageParams, page, page_params
from app.vocabulary import BriefingKind, Channel, DeliveryStatus

router = APIRouter(prefix="/v1/incidents", tags=["incidents"])

# The timeline's pages hold 500 events unless asked otherwise (the other lists': 50).
TimelinePageDep = Annotated[PageParams, Depends(page_params(500))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key and body returns the same incident.",
    ),
]


async def get_dispatcher(celery: PublisherDep) -> Dispatcher:
    """Publishes the dispatch task after commit (see `app.broker.api_dispatcher`)."""
    return api_dispatcher(celery)


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def _view(session: Session, incident: IncidentRow) -> Incident:
    return _views(session, [incident])[0]


def _views(session: Session, incidents: Sequence[IncidentRow]) -> list[Incident]:
    versions = service.latest_versions(session, [i.id for i in incidents])
    return [
        Incident.from_row(i, targeted=i.targeted, latest_version=versions.get(i.id, 0))
        for i in incidents
    ]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Incident,
    responses={200: {"model": Incident, "description": "An idempotent replay."}},
)
def declare_incident(
    body: IncidentDeclaration,
    # A transaction from the start (SQLite: BEGIN IMMEDIATE): the idempotency savepoint
    # below must not be the outermost one, whose release would commit on its own.
    session: WriteSessionDep,
    actor: Operator,
    dispatch: DispatcherDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Incident:
    """Declare a tension incident and brief its audience.

    The answer comes as soon as the ledger rows are written (202); the briefing goes out
    in the background by email and webhook, in each member's language. A declaration of a
    severity in `RRMM_APPROVAL_SEVERITIES` (exercises only with
    `RRMM_APPROVAL_FOR_EXERCISES`) answers 202 with status `pending_approval` and sends
    nothing until another principal approves it (`…/approve`). With an
    `Idempotency-Key`, repeating the same request returns the same incident and sends
    nothing twice; the same key with another body is a 422. With `template` instead of
    `briefing`, the briefing is written from that template (`/v1/templates`) and the
    incident records which template and version.
    """
    data, template = templated.written(session, body, IncidentCreate)
    incident, created = service.declare(
        session,
        data,
        actor=actor,
        idempotency_key=idempotency_key,
        dispatch=dispatch,
        chunk_members=settings.targeting_chunk_members,
        approval=service.ApprovalPolicy.from_settings(settings),
    )
    if created and template is not None:
        templated.record_use(session, incident, template)
    response.headers["Location"] = f"/v1/incidents/{incident.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return _view(session, incident)


@router.post("/preview", response_model=IncidentPreview)
def preview_incident(
    body: IncidentDeclaration, session: SessionDep, _actor: Operator, settings: SettingsDep
) -> IncidentPreview:
    """A dry run of a declaration (the same body): the members it would target, counted by
    network, country, language sent and channel; who gets a fallback language; who would
    wait for the end of their quiet hours; who no channel reaches; and, per language, the
    email and webhook body exactly as a member would get them (a placeholder stands for
    the acknowledgement link). Writes nothing; counted by grouped queries, not per member.
    """
    data, _ = templated.written(session, body, IncidentCreate)
    return IncidentPreview.model_validate(
        preview.preview_declaration(session, data, settings=settings)
    )


@router.get("", response_model=Page[Incident])
def list_incidents(
    session: SessionDep,
    _viewer: Viewer,
    filters: Annotated[IncidentFilters, Query()],
    pages: PageDep,
) -> Page[Incident]:
    """Incidents, newest first, filtered by status, mode, severity or text in the title or
    reference. No briefing text: dashboards may read this."""
    rows = service.list_incidents(session, filters, limit=pages.limit, after=pages.after_uuid())
    return page(rows, pages.limit, key=lambda i: str(i.id), view=partial(_views, session))


@router.get("/{incident_id}", response_model=Incident)
def get_incident(session: SessionDep, _viewer: Viewer, incident: IncidentDep) -> Incident:
    """One incident (no briefing text)."""
    return _view(session, incident)


@router.get(
    "/{incident_id}/status",
    response_model=IncidentStatusView,
    responses={304: {"description": "Not modified: the `If-None-Match` ETag is current."}},
)
async def incident_status(
    incident_id: uuid.UUID,
    cache: StatusCacheDep,
    factory: SessionFactoryDep,
    _viewer: PollingViewer,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """Aggregate progress for dashboards: state, members targeted, deliveries by status and
    channel, answers by response, ack rate, time to first and median answer (seconds from
    the declaration), quota progress, reminders and escalations fired, last change.

    Read from counters kept with the ledger and the answers: the cost does not grow with
    the roster. Poll with `If-None-Match`: an unchanged status is a 304 without a body.
    Each API process keeps the document `RRMM_STATUS_CACHE_SECONDS` (1 s) and the caller's
    key `RRMM_API_KEY_CACHE_SECONDS` (5 s), so a crowd of dashboards costs one read per
    second per incident, and a poll within that second neither a thread nor a database
    connection.
    """
    payload, etag = await cache.document(factory, incident_id)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(payload, media_type="application/json", headers=headers)


@router.get("/{incident_id}/coverage", response_model=CoverageView)
def incident_coverage(
    incident_id: uuid.UUID,
    session: SessionDep,
    _viewer: Viewer,
    by: Annotated[CoverageBy, Query(description="How to group the members.")],
) -> CoverageView:
    """The funnel targeted → sent → failed → answered per network, country, language (the
    language a member was sent) or channel, counted in members. Aggregates only.

    Runs GROUP BY queries over this incident's rows: its cost grows with the incident's
    audience (poll `/status` for a cheap, frequent read)."""
    return CoverageView.model_validate(status_reads.coverage(session, incident_id, by))


@router.get("/{incident_id}/timeline", response_model=Page[TimelineEvent])
def incident_timeline(
    session: SessionDep,
    _actor: Operator,
    incident: IncidentDep,
    pages: TimelinePageDep,
) -> Page[TimelineEvent]:
    """What happened, oldest first, and who did it: declared, fan-out started and finished
    (with outcome counts and duration) per briefing version, updates, reminders,
    escalations, quotas met (or unmet again), the deadline and the operators' notice,
    resolve or cancel (operators only: it names the API keys that acted)."""
    rows = timeline.events(
        session, incident.id, after_seq=pages.after_int() or 0, limit=pages.limit + 1
    )
    return page(
        rows,
        pages.limit,
        key=lambda e: e.seq,
        view=lambda events: [TimelineEvent.model_validate(e) for e in events],
    )


@router.get(
    "/{incident_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`: `status` events (the /status "
            "body, when it changes, at most once per `RRMM_EVENTS_POLL_SECONDS`), "
            "`timeline` events, and `answer` events for operators only.",
            "content": {"text/event-stream": {"itemSchema": EVENT_STREAM_ITEM}},
        }
    },
)
async def incident_events(
    incident_id: uuid.UUID,
    settings: SettingsDep,
    hub: EventHubDep,
    principal: PollingViewer,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{1,9}$",
            description="Resume after this event id: what was missed is sent first.",
        ),
    ] = None,
) -> EventSourceResponse:
    """Live progress as server-sent events, resumable with `Last-Event-ID` on any API
    process: a `status` snapshot first, then `timeline` events (without actors for
    viewers), `answer` events (operators only: who answered what), and a new `status`
    whenever the aggregates change. Viewers get aggregates only.

    Each event's `id` is the incident's event number: reconnecting with the last one seen
    replays what was missed, from the database. The stream ends within 15 s of its key's
    revocation; one key holds at most `RRMM_EVENTS_MAX_STREAMS_PER_KEY` streams per API
    process (429 beyond). Each API process reads an incident once per interval however
    many listen: a dashboard joining a watched incident costs no database read."""
    if not hub.watched(incident_id):
        await hub.in_thread(partial(service.get_incident, incident_id=incident_id))  # or 404
    # Last, so nothing can fail between taking the place and the stream that gives it back
    # (the background task covers a stream that never starts, e.g. HEAD).
    lease = hub.lease(principal.key_id) if principal.key_id is not None else None
    return EventSourceResponse(
        events.stream(
            hub,
            incident_id,
            operator=principal.role.includes(Role.OPERATOR),
            last_event_id=int(last_event_id) if last_event_id is not None else None,
            key_id=principal.key_id,
            lease=lease,
        ),
        ping=settings.events_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(lease.release) if lease is not None else None,
    )


@router.get("/{incident_id}/briefings", response_model=list[BriefingVersion])
def list_briefings(
    incident_id: uuid.UUID, session: SessionDep, _actor: Operator
) -> list[BriefingVersion]:
    """Every briefing version with its text, oldest first (operators only)."""
    return [BriefingVersion.from_row(b) for b in service.briefings(session, incident_id)]


@router.post(
    "/{incident_id}/updates", status_code=status.HTTP_202_ACCEPTED, response_model=Incident
)
def post_update(
    incident_id: uuid.UUID,
    body: IncidentUpdateRequest,
    session: WriteSessionDep,
    actor: Operator,
    dispatch: DispatcherDep,
    settings: SettingsDep,
) -> Incident:
    """Send a new briefing version to the same audience, and to members who newly match
    it. Unsent deliveries of earlier versions are superseded. Written out, or from a
    template (`template` instead of `briefing`)."""
    data, template = templated.written(session, body, IncidentUpdate)
    incident, briefing = service.post_update(
        session,
        incident_id,
        data,
        actor=actor,
        dispatch=dispatch,
        chunk_members=settings.targeting_chunk_members,
    )
    if template is not None:
        templated.record_use(session, incident, template, briefing=briefing)
    return _view(session, incident)


@router.post("/{incident_id}/updates/preview", response_model=IncidentPreview)
def preview_update(
    incident_id: uuid.UUID,
    body: IncidentUpdateRequest,
    session: SessionDep,
    _actor: Operator,
    settings: SettingsDep,
) -> IncidentPreview:
    """A dry run of an update (the same body): who it would reach (everyone targeted so far
    and the members who newly match) and what they would read. Writes nothing."""
    data, _ = templated.written(session, body, IncidentUpdate)
    return IncidentPreview.model_validate(
        preview.preview_update(session, incident_id, data, settings=settings)
    )


@router.post(
    "/{incident_id}/approve", status_code=status.HTTP_202_ACCEPTED, response_model=Incident
)
def approve_incident(
    incident_id: uuid.UUID,
    session: WriteSessionDep,
    actor: Operator,
    dispatch: DispatcherDep,
    settings: SettingsDep,
) -> Incident:
    """Approve a declaration waiting for a second person: its fan-out starts now. The
    principal who declared it gets 403; an incident not pending (approved, rejected,
    expired) is a 409."""
    incident = service.approve(
        session,
        incident_id,
        actor=actor,
        dispatch=dispatch,
        chunk_members=settings.targeting_chunk_members,
    )
    return _view(session, incident)


@router.post("/{incident_id}/reject", response_model=Incident)
def reject_incident(
    incident_id: uuid.UUID, body: IncidentReject, session: WriteSessionDep, actor: Operator
) -> Incident:
    """Reject a declaration waiting for approval, with a reason: it ends `rejected` and
    nothing is ever sent. An incident not pending is a 409."""
    return _view(session, service.reject(session, incident_id, body.reason, actor=actor))


@router.post(
    "/{incident_id}/resolve", status_code=status.HTTP_202_ACCEPTED, response_model=Incident
)
def resolve_incident(
    incident_id: uuid.UUID,
    session: WriteSessionDep,
    actor: Operator,
    dispatch: DispatcherDep,
    body: IncidentEnd | None = None,
) -> Incident:
    """Resolve: the stand-down goes to every member already briefed; nothing else is sent."""
    incident, _ = service.end_incident(
        session,
        incident_id,
        body or IncidentEnd(),
        kind=BriefingKind.RESOLVED,
        actor=actor,
        dispatch=dispatch,
    )
    return _view(session, incident)


@router.post("/{incident_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=Incident)
def cancel_incident(
    incident_id: uuid.UUID,
    session: WriteSessionDep,
    actor: Operator,
    dispatch: DispatcherDep,
    body: IncidentEnd | None = None,
) -> Incident:
    """Cancel: what has not been sent is not sent, and members already briefed are told."""
    incident, _ = service.end_incident(
        session,
        incident_id,
        body or IncidentEnd(),
        kind=BriefingKind.CANCELLED,
        actor=actor,
        dispatch=dispatch,
    )
    return _view(session, incident)


@router.get("/{incident_id}/deliveries", response_model=Page[DeliveryView])
def list_deliveries(
    incident_id: uuid.UUID,
    session: SessionDep,
    _actor: Operator,
    pages: PageDep,
    status_filter: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    channel: Annotated[Channel | None, Query()] = None,
) -> Page[DeliveryView]:
    """The ledger of an incident: member, channel, status, attempts, language, last error
    and timestamps of every delivery, filtered by status or channel."""
    rows = service.list_deliveries(
        session,
        incident_id,
        status=status_filter,
        channel=channel,
        limit=pages.limit,
        after=pages.after_int(),
    )
    return page(
        rows,
        pages.limit,
        key=lambda row: row.Delivery.id,
        view=lambda rows: [DeliveryView.from_row(row) for row in rows],
    )
