"""HTTP routes for briefing templates (operators and admins; viewers see none)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from app.briefing_templates import service
from app.briefing_templates.schemas import (
    BriefingTemplateView,
    TemplateCreate,
    TemplateSummary,
    TemplateUpdate,
)
from app.deps import Operator, SessionDep
from app.pagination import Page, PageDep, page

router = APIRouter(prefix="/v1/templates", tags=["templates"])

VersionQuery = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


def _view(at: service.TemplateAt) -> dict[str, Any]:
    template = at.template
    return {
        "id": template.id,
        "name": template.name,
        "description": template.description,
        "version": at.version,
        "latest_version": template.version,
        "variables": at.variables,
        "languages": at.languages,
        "content": at.content,
        "created_at": template.created_at,
        "updated_at": template.updated_at,
    }


def _latest(template: Any) -> dict[str, Any]:
    return _view(service.TemplateAt.latest(template))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BriefingTemplateView)
def create_template(
    body: TemplateCreate, session: SessionDep, actor: Operator, response: Response
) -> dict[str, Any]:
    """Create a template: per-language Jinja2 source for the subject, body and talking
    points, and the variables it uses. Checked now: a syntax error, an undeclared
    variable or a construct the sandbox refuses is a 422 naming the field. Names are
    unique. Version 1."""
    template = service.create_template(session, body, actor=actor)
    response.headers["Location"] = f"/v1/templates/{template.id}"
    return _latest(template)


@router.get("", response_model=Page[TemplateSummary])
def list_templates(session: SessionDep, _actor: Operator, pages: PageDep) -> Page[TemplateSummary]:
    """All templates at their latest version, without their wording, a page at a time."""
    rows = service.list_templates(session, limit=pages.limit, after=pages.after_uuid())
    return page(
        rows,
        pages.limit,
        key=lambda t: str(t.id),
        view=lambda templates: [TemplateSummary.model_validate(t) for t in templates],
    )


@router.get("/{template_id}", response_model=BriefingTemplateView)
def get_template(
    template_id: uuid.UUID, session: SessionDep, _actor: Operator, version: VersionQuery = None
) -> dict[str, Any]:
    """A template at its latest version, or at `?version=` (every version is kept)."""
    return _view(service.template_at(session, template_id, version, field="query.version"))


@router.patch("/{template_id}", response_model=BriefingTemplateView)
def update_template(
    template_id: uuid.UUID, body: TemplateUpdate, session: SessionDep, actor: Operator
) -> dict[str, Any]:
    """Change a template: its version goes up by one, and the earlier version stays
    readable (and usable by a declaration that names it)."""
    return _latest(service.update_template(session, template_id, body, actor=actor))


@router.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(template_id: uuid.UUID, session: SessionDep, actor: Operator) -> Response:
    """Delete a template and its versions. Incidents keep the id and version they used."""
    service.delete_template(session, template_id, actor=actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
