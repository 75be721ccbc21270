"""Briefing templates: checked when written, rendered sandboxed when declared from.

A template's texts are Jinja2 source. They are rendered in Jinja2's sandboxed environment
(no access to Python internals: `''.__class__` is a security error, not a way in), with
only the declared variables (strings) in scope, into plain text: the briefing is then
escaped where it becomes HTML, like any briefing an operator types. Every change writes a
new version; a declaration may pin the version its wording was approved at.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.briefing_templates.schemas import (
    TemplateCreate,
    TemplateRef,
    TemplateUpdate,
    TemplateUse,
)
from app.errors import Conflict, FieldProblem, InvalidInput, NotFound
from app.models import BriefingTemplate, BriefingTemplateVersion
from app.models.base import utcnow
from app.principal import Principal

_PARTS = ("subject", "body")


@cache
def _environment() -> SandboxedEnvironment:
    # Plain text out: the email's HTML template escapes the briefing, as it does any other.
    return SandboxedEnvironment(
        autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False
    )


def _sources(content: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Every text of a template with the field it sits in: `content.fr.body`, …"""
    for language, entry in content.items():
        for part in _PARTS:
            yield f"content.{language}.{part}", entry[part]
        for index, point in enumerate(entry.get("talking_points") or []):
            yield f"content.{language}.talking_points.{index}", point


def _forbidden_node(tree: nodes.Template) -> str | None:
    """Constructs a template has no business with: other templates, and blocks."""
    for kind, what in (
        (nodes.Include, "include"),
        (nodes.Import, "import"),
        (nodes.FromImport, "import"),
        (nodes.Extends, "extends"),
        (nodes.Block, "block"),
    ):
        if tree.find(kind) is not None:
            return what
    return None


def check_source(content: Mapping[str, Any], variables: list[dict[str, Any]]) -> None:
    """Refuse a template that would not render: a syntax error, a variable it does not
    declare, a construct reaching outside it, or anything the sandbox refuses when tried
    with every variable set."""
    environment = _environment()
    declared = {v["name"] for v in variables}
    trial = {name: name for name in declared}
    for field, source in _sources(content):
        where = f"body.{field}"
        try:
            tree = environment.parse(source)
        except TemplateSyntaxError as exc:
            raise InvalidInput.at(where, f"line {exc.lineno}: {exc.message}") from exc
        forbidden = _forbidden_node(tree)
        if forbidden is not None:
            raise InvalidInput.at(where, f"'{forbidden}' is not allowed in a template")
        undeclared = sorted(meta.find_undeclared_variables(tree) - declared)
        if undeclared:
            raise InvalidInput.at(
                where, f"uses {undeclared[0]!r}, which is not a declared variable"
            )
        try:
            environment.from_string(source).render(trial)
        except TemplateError as exc:  # SecurityError included: the sandbox said no
            raise InvalidInput.at(where, f"does not render: {exc}") from exc


def _name_taken() -> Conflict:
    return Conflict(
        "a template with this name already exists",
        errors=[FieldProblem(field="body.name", reason="already used by another template")],
    )


def _dump_content(data: TemplateCreate | TemplateUpdate) -> dict[str, Any]:
    assert data.content is not None
    return {language: entry.model_dump() for language, entry in data.content.items()}


def _write_version(session: Session, template: BriefingTemplate, actor: Principal) -> None:
    try:
        session.flush()  # the template's id, and a name taken meanwhile is a 409
    except IntegrityError as exc:
        raise _name_taken() from exc
    session.add(
        BriefingTemplateVersion(
            template_id=template.id,
            version=template.version,
            variables=template.variables,
            content=template.content,
            languages=template.languages,
            created_by_key_id=actor.key_id,
        )
    )
    session.flush()


def create_template(
    session: Session, data: TemplateCreate, *, actor: Principal
) -> BriefingTemplate:
    content = _dump_content(data)
    variables = [v.model_dump() for v in data.variables]
    check_source(content, variables)
    if session.scalar(select(BriefingTemplate.id).where(BriefingTemplate.name == data.name)):
        raise _name_taken()
    template = BriefingTemplate(
        name=data.name,
        description=data.description,
        version=1,
        variables=variables,
        content=content,
        languages=list(content),
    )
    session.add(template)
    _write_version(session, template, actor)
    record(session, actor, "template.create", "template", template.id, {"version": 1})
    return template


def get_template(session: Session, template_id: uuid.UUID) -> BriefingTemplate:
    template = session.get(BriefingTemplate, template_id)
    if template is None:
        raise NotFound(f"no template {template_id}")
    return template


@dataclass(frozen=True)
class TemplateAt:
    """A template as it was at one version."""

    template: BriefingTemplate
    version: int
    variables: list[dict[str, Any]]
    content: dict[str, Any]
    languages: list[str]

    @classmethod
    def latest(cls, template: BriefingTemplate) -> TemplateAt:
        return cls(
            template, template.version, template.variables, template.content, template.languages
        )


def template_at(
    session: Session, template_id: uuid.UUID, version: int | None, *, field: str = "version"
) -> TemplateAt:
    """The template at `version` (the latest when None); an unknown version is a 422 on
    `field` (the template exists: it is the version that is wrong)."""
    template = get_template(session, template_id)
    if version is None or version == template.version:
        return TemplateAt.latest(template)
    kept = session.get(BriefingTemplateVersion, (template_id, version))
    if kept is None:
        raise InvalidInput.at(field, f"this template has versions 1 to {template.version}")
    return TemplateAt(template, version, kept.variables, kept.content, kept.languages)


def list_templates(
    session: Session, *, limit: int, after: uuid.UUID | None
) -> list[BriefingTemplate]:
    query = select(BriefingTemplate).order_by(BriefingTemplate.id).limit(limit + 1)
    if after is not None:
        query = query.where(BriefingTemplate.id > after)
    return list(session.scalars(query))


def update_template(
    session: Session, template_id: uuid.UUID, data: TemplateUpdate, *, actor: Principal
) -> BriefingTemplate:
    template = get_template(session, template_id)
    changes = data.model_fields_set
    variables = (
        [v.model_dump() for v in data.variables]
        if data.variables is not None
        else template.variables
    )
    # In the operator's order (JSONB keeps no key order): the first language is checked first.
    content = (
        _dump_content(data)
        if data.content is not None
        else {language: template.content[language] for language in template.languages}
    )
    check_source(content, variables)
    if data.name is not None and data.name != template.name:
        taken = session.scalar(
            select(BriefingTemplate.id).where(
                BriefingTemplate.name == data.name, BriefingTemplate.id != template.id
            )
        )
        if taken is not None:
            raise _name_taken()
        template.name = data.name
    if "description" in changes:
        template.description = data.description
    template.variables = variables
    template.content = content
    template.languages = list(content)
    template.version += 1
    template.updated_at = utcnow()
    _write_version(session, template, actor)
    record(
        session,
        actor,
        "template.update",
        "template",
        template.id,
        {"version": template.version, "fields": sorted(changes)},
    )
    return template


def delete_template(session: Session, template_id: uuid.UUID, *, actor: Principal) -> None:
    """Delete a template and its versions. Incidents keep the id and version they used."""
    template = get_template(session, template_id)
    record(session, actor, "template.delete", "template", template.id, {})
    session.delete(template)
    session.flush()


def render_briefing(
    session: Session, use: TemplateUse, *, require_english: bool
) -> tuple[dict[str, Any], TemplateRef]:
    """The briefing (`{"en": {"subject", "body", "talking_points"}}`) a template renders to
    with the given values, and which version it was. A value for no variable of the
    template or a required one missing: 422s naming the field. (Whether the rendering fits
    a briefing's limits is the incidents' to say: app/incidents/templated.py.)"""
    try:
        at = template_at(session, use.id, use.version, field="body.template.version")
    except NotFound as exc:
        raise InvalidInput.at("body.template.id", "no such template") from exc
    declared = {v["name"]: v for v in at.variables}
    for name in use.variables:
        if name not in declared:
            raise InvalidInput.at(
                f"body.template.variables.{name}", "not a variable of this template"
            )
    for name, variable in declared.items():
        if variable.get("required", True) and not use.variables.get(name, "").strip():
            raise InvalidInput.at(f"body.template.variables.{name}", "required by the template")
    if require_english and "en" not in at.content:
        raise InvalidInput.at(
            "body.template", "the template has no English entry (or set require_english to false)"
        )
    values = {name: use.variables.get(name, "") for name in declared}
    environment = _environment()
    briefing: dict[str, Any] = {}
    for language in at.languages:
        entry = at.content[language]
        try:
            rendered: dict[str, Any] = {
                part: environment.from_string(entry[part]).render(values).strip() for part in _PARTS
            }
            points = [
                environment.from_string(point).render(values).strip()
                for point in entry.get("talking_points") or []
            ]
        except TemplateError as exc:
            raise InvalidInput.at(
                "body.template", f"the {language} entry does not render: {exc}"
            ) from exc
        rendered["talking_points"] = [p for p in points if p]
        briefing[language] = rendered
    return briefing, TemplateRef(id=at.template.id, version=at.version)
