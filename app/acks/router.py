"""Acknowledgements: the page a member opens from the email, the JSON route for newsroom
systems (the token is the credential), and the operators' view of the answers."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from app.acks import quotas, service
from app.acks.page import render_invalid, render_page, response_labels
from app.acks.ratelimit import RateLimiter
from app.acks.schemas import (
    AckCreate,
    AckReceipt,
    AckView,
    CurrentAckView,
    QuotaView,
    form_comment,
)
from app.db import session_scope
from app.deliveries.tokens import AckTokenSigner
from app.deps import Operator, SessionDep, Viewer
from app.errors import InvalidInput
from app.fields import CountryCode, LanguageTag, Network
from app.incidents.service import get_incident
from app.pagination import DEFAULT_LIMIT, Page, decode_int_cursor, next_cursor

pages = APIRouter(tags=["acknowledgements"], include_in_schema=False)
router = APIRouter(tags=["acknowledgements"])

# The page carries a credential in its URL: never cached, never sent on as a referrer,
# never framed; it loads nothing from anywhere and runs no script.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def signer(request: Request) -> AckTokenSigner:
    result: AckTokenSigner = request.app.state.ack_signer
    return result


def limiter(request: Request) -> RateLimiter:
    result: RateLimiter = request.app.state.ack_limiter
    return result


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _invalid() -> HTMLResponse:
    return _html(render_invalid(), 404)


def _page(
    seen: service.AckView,
    *,
    status: int = 200,
    error: str | None = None,
    comment_error: str | None = None,
) -> HTMLResponse:
    labels = response_labels(seen.language, seen.incident.responses)
    return _html(
        render_page(
            "page.html.j2",
            seen.language,
            title=seen.incident.reference,
            reference=seen.incident.reference,
            incident_title=seen.incident.title,
            exercise=seen.incident.mode == "exercise",
            responses=seen.incident.responses,
            labels=labels,
            current=seen.current,
            error=error,
            comment_error=comment_error,
            max_comment=service.MAX_COMMENT,
        ),
        status,
    )


@pages.api_route("/ack/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def ack_page(token: str, request: Request) -> HTMLResponse:
    """The page behind the email's link: the incident and the answer buttons.

    Reading it changes nothing: mail scanners fetch links (HEAD, GET) before people do.
    """
    limiter(request).check(request, "ack-page", token)
    session: Session
    with session_scope(request.app.state.session_factory) as session:
        try:
            return _page(service.view(session, signer(request), token))
        except service.LinkNotValid:
            return _invalid()


@pages.post("/ack/{token}", response_class=HTMLResponse)
def ack_form(
    token: str,
    request: Request,
    response: Annotated[str, Form(max_length=40)] = "",
    comment: Annotated[str, Form(max_length=4000)] = "",
) -> HTMLResponse:
    """The page's form: records the answer (again, if it changes) and confirms it."""
    limiter(request).check(request, "ack-post", token)
    try:
        with session_scope(request.app.state.session_factory) as session:
            ack, seen = service.record(
                session,
                signer(request),
                token,
                response=response,
                comment=form_comment(comment),
                route="page",
            )
    except service.LinkNotValid:
        return _invalid()
    except InvalidInput as exc:
        # The page again, with the reason next to the field it is about.
        on_comment = any(problem.field == "comment" for problem in exc.errors or [])
        try:
            with session_scope(request.app.state.session_factory) as session:
                return _page(
                    service.view(session, signer(request), token),
                    status=422,
                    error=None if on_comment else exc.detail,
                    comment_error=exc.detail if on_comment else None,
                )
        except service.LinkNotValid:
            return _invalid()
    labels = response_labels(seen.language, seen.incident.responses)
    return _html(
        render_page(
            "confirmed.html.j2",
            seen.language,
            title=seen.incident.reference,
            reference=seen.incident.reference,
            incident_title=seen.incident.title,
            response=ack.response,
            labels=labels,
            late=ack.late,
        )
    )


@router.post("/v1/acks", response_model=AckReceipt)
def post_ack(body: AckCreate, request: Request, session: SessionDep) -> dict[str, Any]:
    """Record an answer from a newsroom system, with the token from the webhook's `ack`
    block (no API key: the token is the credential). Repeating it is harmless; a later
    answer replaces the current one and the history keeps both. 404 for any invalid,
    tampered or expired token."""
    limiter(request).check(request, "ack-api", body.token)
    ack, seen = service.record(
        session,
        signer(request),
        body.token,
        response=body.response,
        comment=body.comment,
        route="api",
    )
    return {
        "incident": seen.incident.reference,
        "response": ack.response,
        "answered_at": ack.answered_at,
        "late": ack.late,
        "briefing_version": ack.briefing_version,
    }


@router.get("/v1/incidents/{incident_id}/acks", response_model=Page[CurrentAckView])
def list_acks(
    incident_id: uuid.UUID,
    session: SessionDep,
    _actor: Operator,
    response: Annotated[str | None, Query(max_length=40)] = None,
    network: Annotated[Network | None, Query()] = None,
    country: Annotated[CountryCode | None, Query()] = None,
    language: Annotated[LanguageTag | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Each member's current answer, with comment, route, version and language seen,
    delay since delivery and whether it came late; filtered by response, network,
    country or language."""
    get_incident(session, incident_id)
    rows = service.list_current(
        session,
        incident_id,
        response=response,
        network=network,
        country=country,
        language=language,
        limit=limit,
        after=decode_int_cursor(cursor),
    )
    items = rows[:limit]
    return {
        "items": [
            {
                "member": {
                    "id": row.CurrentAck.member_id,
                    "name": row.name,
                    "network": row.network,
                    "country": row.country,
                },
                "answer": row.Ack,
                "first_answered_at": row.CurrentAck.first_answered_at,
            }
            for row in items
        ],
        "next_cursor": next_cursor(rows, limit, items[-1].CurrentAck.ack_id if items else None),
    }


@router.get("/v1/incidents/{incident_id}/members/{member_id}/acks", response_model=list[AckView])
def member_ack_history(
    incident_id: uuid.UUID, member_id: uuid.UUID, session: SessionDep, _actor: Operator
) -> list[Any]:
    """Every answer a member gave to the incident, oldest first."""
    get_incident(session, incident_id)
    return list(service.history(session, incident_id, member_id))


@router.get("/v1/incidents/{incident_id}/quotas", response_model=list[QuotaView])
def quota_progress(
    incident_id: uuid.UUID, session: SessionDep, _viewer: Viewer
) -> list[dict[str, Any]]:
    """Coverage quotas and how far each segment is (aggregates only)."""
    incident = get_incident(session, incident_id)
    return [
        {
            "network": p.quota.get("network"),
            "countries": p.quota.get("countries", []),
            "languages": p.quota.get("languages", []),
            "responses": p.quota["responses"],
            "min": p.quota["min"],
            "answered": p.answered,
            "targeted": p.targeted,
            "met": p.met,
        }
        for p in quotas.quota_progress(session, incident)
    ]
