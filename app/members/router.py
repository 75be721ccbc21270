"""HTTP routes for members: parse, call one service function, return."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.db import session_scope
from app.deps import MemberPolicyDep, Operator, SessionDep, SessionFactoryDep
from app.errors import UnsupportedMediaType
from app.members import csv_io, service
from app.members.schemas import (
    ImportResult,
    Member,
    MemberCreate,
    MemberFilters,
    MemberUpdate,
    MemberWithSecret,
    WebhookSecret,
)
from app.models import Member as MemberRow
from app.pagination import Page, PageDep, page

router = APIRouter(prefix="/v1/members", tags=["members"])

CSV_MEDIA_TYPES = ("text/csv", "application/csv", "text/plain")


def _view(member: MemberRow) -> Member:
    return Member.model_validate(service.member_out(member))


def _views(members: Sequence[MemberRow]) -> list[Member]:
    return [_view(m) for m in members]


def _with_secret(member: MemberRow, secret: str | None) -> MemberWithSecret:
    return MemberWithSecret.model_validate({**service.member_out(member), "webhook_secret": secret})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=MemberWithSecret)
def create_member(
    body: MemberCreate, session: SessionDep, policy: MemberPolicyDep, actor: Operator
) -> MemberWithSecret:
    """Add a member to a network.

    A member with a `webhook_url` gets a Standard Webhooks signing secret, returned here
    once as `webhook_secret`; keep it, it is not shown again (rotate it if lost).
    """
    member, secret = service.create_member(session, body, policy=policy, actor=actor)
    return _with_secret(member, secret)


@router.get("", response_model=Page[Member])
def list_members(
    session: SessionDep,
    _actor: Operator,
    filters: Annotated[MemberFilters, Query()],
    pages: PageDep,
) -> Page[Member]:
    """List members, filtered by network, language, theme, country, tag, status or free
    text `q` (name, organization, title, email), in creation order, a page at a time."""
    rows = service.list_members(session, filters, limit=pages.limit, after=pages.after_uuid())
    return page(rows, pages.limit, key=lambda m: str(m.id), view=_views)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def export_members(
    factory: SessionFactoryDep, _actor: Operator, filters: Annotated[MemberFilters, Query()]
) -> StreamingResponse:
    """Export the filtered members as CSV, in the columns that the import accepts."""

    def chunks() -> Iterator[bytes]:
        # The request's session is closed once this function returns; the stream needs its own.
        with session_scope(factory) as session:
            for chunk in csv_io.export_csv(session, filters):
                yield chunk.encode()

    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="members.csv"'},
    )


@router.post(
    "/import",
    response_model=ImportResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def import_members(
    request: Request,
    policy: MemberPolicyDep,
    factory: SessionFactoryDep,
    actor: Operator,
    on_error: Annotated[csv_io.OnError, Query()] = "abort",
) -> ImportResult:
    """Import members from CSV (`Content-Type: text/csv`), upserting by email.

    Every row is validated first. By default (`on_error=abort`) one bad row means nothing is
    written and the 422 lists every problem by line and column; `on_error=skip` writes the
    valid rows and reports the others.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CSV_MEDIA_TYPES:
        raise UnsupportedMediaType("send the file as `Content-Type: text/csv`")
    raw = await request.body()

    def run() -> ImportResult:
        with session_scope(factory) as session:
            return csv_io.import_members(
                session, raw, policy=policy, actor=actor, on_error=on_error
            )

    return await run_in_threadpool(run)


@router.get("/{member_id}", response_model=Member)
def get_member(member_id: uuid.UUID, session: SessionDep, _actor: Operator) -> Member:
    """One member, with contact details (operators and admins only)."""
    return _view(service.get_member(session, member_id))


@router.patch("/{member_id}", response_model=MemberWithSecret)
def update_member(
    member_id: uuid.UUID,
    body: MemberUpdate,
    session: SessionDep,
    policy: MemberPolicyDep,
    actor: Operator,
) -> MemberWithSecret:
    """Change some fields of a member. Adding a webhook to a member that had none returns
    its new signing secret as `webhook_secret`, once."""
    member, secret = service.update_member(session, member_id, body, policy=policy, actor=actor)
    return _with_secret(member, secret)


@router.delete("/{member_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_member(member_id: uuid.UUID, session: SessionDep, actor: Operator) -> Response:
    """Remove a member and their contact details (and their roster memberships)."""
    service.delete_member(session, member_id, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{member_id}/webhook-secret", response_model=WebhookSecret)
def rotate_webhook_secret(
    member_id: uuid.UUID, session: SessionDep, policy: MemberPolicyDep, actor: Operator
) -> WebhookSecret:
    """Issue a new webhook signing secret; the previous one stops being used at once."""
    secret = service.rotate_webhook_secret(session, member_id, policy=policy, actor=actor)
    return WebhookSecret(webhook_secret=secret)
