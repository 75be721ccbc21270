"""Acknowledgements: the page a member opens from the email, the JSON route for newsroom
systems (the token is the credential), and the operators' view of the answers."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse

from app.acks import quotas, service
from app.acks.page import render_invalid, render_page, response_labels
from app.acks.schemas import (
    AckCreate,
    AckReceipt,
    AckView,
    CurrentAckView,
    QuotaView,
    form_comment,
)
from app.db import session_scope
from app.deps import (
    IncidentDep,
    Operator,
    RateLimiterDep,
    SessionDep,
    SessionFactoryDep,
    SignerDep,
    Viewer,
)
from app.errors import InvalidInput
from app.fields import CountryCode, LanguageTag, Network
from app.pagination import Page, PageDep, page
from app.security import page_headers

pages = APIRouter(tags=["acknowledgements"], include_in_schema=False)
router = APIRouter(tags=["acknowledgements"])

# The page carries a credential in its URL: never cached, never sent on as a referrer,
# never framed; it loads nothing from anywhere and runs no script.
PAGE_HEADERS = page_headers(
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


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
            heading=seen.subject,
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
def ack_page(
    token: str,
    request: Request,
    limiter: RateLimiterDep,
    signer: SignerDep,
    factory: SessionFactoryDep,
) -> HTMLResponse:
    """The page behind the email's link: the incident and the answer buttons.

    Reading it changes nothing: mail scanners fetch links (HEAD, GET) before people do.
    """
    limiter.check(request, "ack-page", token)
    with session_scope(factory) as session:
        try:
            return _page(service.view(session, signer, token))
        except service.LinkNotValid:
            return _invalid()


@pages.post("/ack/{token}", response_class=HTMLResponse)
def ack_form(
    token: str,
    request: Request,
    limiter: RateLimiterDep,
    signer: SignerDep,
    factory: SessionFactoryDep,
    response: Annotated[str, Form(max_length=40)] = "",
    comment: Annotated[str, Form(max_length=4000)] = "",
) -> HTMLResponse:
    """The page's form: records the answer (again, if it changes) and confirms it."""
    limiter.check(request, "ack-post", token)
    try:
        with session_scope(factory) as session:
            ack, seen = service.record(
                session,
                signer,
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
            with session_scope(factory) as session:
                return _page(
                    service.view(session, signer, token),
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
            heading=seen.subject,
            response=ack.response,
            labels=labels,
            late=ack.late,
        )
    )


@router.post("/v1/acks", response_model=AckReceipt)
def post_ack(
    body: AckCreate,
    request: Request,
    session: SessionDep,
    limiter: RateLimiterDep,
    signer: SignerDep,
) -> AckReceipt:
    """Record an answer from a newsroom system, with the token from the webhook's `ack`
    block (no API key: the token is the credential). Repeating it is harmless; a later
    answer replaces the current one and the history keeps both. 404 for any invalid,
    tampered or expired token."""
    limiter.check(request, "ack-api", body.token)
    ack, seen = service.record(
        session,
        signer,
        body.token,
        response=body.response,
        comment=body.comment,
        route="api",
    )
    return AckReceipt.from_ack(ack, reference=seen.incident.reference)


@router.get("/v1/incidents/{incident_id}/acks", response_model=Page[CurrentAckView])
def list_acks(
    session: SessionDep,
    _actor: Operator,
    incident: IncidentDep,
    pages: PageDep,
    response: Annotated[str | None, Query(max_length=40)] = None,
    network: Annotated[Network | None, Query()] = None,
    country: Annotated[CountryCode | None, Query()] = None,
    language: Annotated[LanguageTag | None, Query()] = None,
) -> Page[CurrentAckView]:
    """Each member's current answer, with comment, route, version and language seen,
    delay since delivery and whether it came late; filtered by response, network,
    country or language."""
    rows = service.list_current(
        session,
        incident.id,
        response=response,
        network=network,
        country=country,
        language=language,
        limit=pages.limit,
        after=pages.after_int(),
    )
    return page(
        rows,
        pages.limit,
        key=lambda row: row.CurrentAck.ack_id,
        view=lambda rows: [CurrentAckView.from_row(row) for row in rows],
    )


@router.get("/v1/incidents/{incident_id}/members/{member_id}/acks", response_model=list[AckView])
def member_ack_history(
    incident_id: uuid.UUID,
    member_id: uuid.UUID,
    session: SessionDep,
    _actor: Operator,
    _incident: IncidentDep,  # or 404
) -> list[AckView]:
    """Every answer a member gave to the incident, oldest first."""
    return [AckView.model_validate(a) for a in service.history(session, incident_id, member_id)]


@router.get("/v1/incidents/{incident_id}/quotas", response_model=list[QuotaView])
def quota_progress(session: SessionDep, _viewer: Viewer, incident: IncidentDep) -> list[QuotaView]:
    """Coverage quotas and how far each segment is (aggregates only)."""
    return [QuotaView.from_progress(p) for p in quotas.quota_progress(session, incident)]
