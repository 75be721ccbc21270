"""Declarations and updates written from a briefing template: the template renders the
briefing (app/briefing_templates), the incidents check it as they check any briefing, and
the incident and its version record which template and version it was."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.briefing_templates.schemas import TemplateRef
from app.briefing_templates.service import render_briefing
from app.errors import InvalidInput
from app.incidents.schemas import BriefingEntry, BriefingSource
from app.models import Briefing, Incident

Written = TypeVar("Written", bound=BaseModel)


def _checked(rendered: dict[str, Any]) -> dict[str, Any]:
    """Each rendered language as a briefing entry, or a 422 saying which part overflowed."""
    briefing = {}
    for language, entry in rendered.items():
        try:
            briefing[language] = BriefingEntry.model_validate(entry).model_dump()
        except ValidationError as exc:
            error = exc.errors()[0]
            part = ".".join(str(p) for p in error["loc"])
            raise InvalidInput.at(
                "body.template.variables",
                f"the rendered {language} {part} is not a valid briefing: {error['msg']}",
            ) from exc
    return briefing


def written(
    session: Session, body: BriefingSource, into: type[Written]
) -> tuple[Written, TemplateRef | None]:
    """A declaration or update as the incidents service takes it: with its briefing
    written out, rendered from the template when the body names one."""
    fields = body.model_dump(exclude={"template"})
    if body.template is None:
        return into.model_validate(fields), None
    rendered, used = render_briefing(session, body.template, require_english=body.require_english)
    try:
        return into.model_validate({**fields, "briefing": _checked(rendered)}), used
    except ValidationError as exc:
        raise InvalidInput.at(
            "body.template", f"the rendered briefing is not valid: {exc.errors()[0]['msg']}"
        ) from exc


def record_use(
    session: Session, incident: Incident, used: TemplateRef, *, briefing: Briefing | None = None
) -> None:
    """Record on the incident (for its declaration) or on the briefing version which
    template, at which version, the wording came from."""
    if briefing is None:
        incident.template_id, incident.template_version = used.id, used.version
        briefing = session.scalars(
            select(Briefing).where(Briefing.incident_id == incident.id).order_by(Briefing.version)
        ).first()
    if briefing is not None:
        briefing.template_id, briefing.template_version = used.id, used.version
    session.flush()
