"""CSV import (validate every row first, then write all or nothing) and export.

Columns are the member fields; lists (languages, themes, tags) are separated by `;`,
quiet hours are two columns `quiet_hours_start` / `quiet_hours_end` (HH:MM), consent is
`consent_given_at` (ISO 8601 with offset), `consent_method`, `consent_note`.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.errors import Conflict, FieldProblem, InvalidInput
from app.members.schemas import (
    ImportedSecret,
    ImportResult,
    ImportRowError,
    MemberCreate,
    MemberFilters,
)
from app.members.service import MemberPolicy, iter_members, member_columns
from app.models import Member
from app.models.base import uuid7
from app.netguard import UnsafeURL, check_webhook_url
from app.principal import Principal
from app.security import new_webhook_secret

COLUMNS = (
    "network",
    "name",
    "organization",
    "title",
    "country",
    "languages",
    "themes",
    "tags",
    "email",
    "webhook_url",
    "timezone",
    "quiet_hours_start",
    "quiet_hours_end",
    "status",
    "consent_given_at",
    "consent_method",
    "consent_note",
)
REQUIRED_COLUMNS = frozenset({"network", "name", "country", "consent_given_at", "consent_method"})
LIST_COLUMNS = frozenset({"languages", "themes", "tags"})
LIST_SEPARATOR = ";"
MAX_ROWS = 100_000
# Spreadsheet programs run cells that start with these as formulas (CSV injection), also
# after leading spaces and in their full-width forms (＝, ＋, －, ＠).
_FORMULA_PREFIXES = ("=", "+", "-", "@")
_CONTROL_PREFIXES = ("\t", "\r")
_ESCAPE = "'"

OnError = Literal["abort", "skip"]
Progress = Callable[[int], None]


@dataclass
class ParsedRow:
    line: int
    data: MemberCreate


@dataclass
class ParsedFile:
    rows: list[ParsedRow] = field(default_factory=list)
    errors: list[ImportRowError] = field(default_factory=list)


def _file_error(reason: str) -> InvalidInput:
    return InvalidInput(f"body: {reason}", errors=[FieldProblem(field="body", reason=reason)])


def decode_csv(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_error(f"the file is not UTF-8 (byte {exc.start})") from exc
    if "\x00" in text:
        raise _file_error("the file contains NUL characters")
    return text


def _looks_like_formula(value: str) -> bool:
    """Whether a spreadsheet could read the cell as a formula: it starts with a tab or CR,
    or its NFKC form (full-width ＝ is =), after leading whitespace and invisible format
    characters (zero-width space, BOM), starts with = + - or @."""
    text = unicodedata.normalize("NFKC", value)
    if text.startswith(_CONTROL_PREFIXES):
        return True
    start = 0
    while start < len(text) and (
        text[start].isspace() or unicodedata.category(text[start]) == "Cf"
    ):
        start += 1
    return text.startswith(_FORMULA_PREFIXES, start)


def _needs_escape(value: str) -> bool:
    # Past any escapes already there: a value that starts with the escape is escaped once
    # more, so that import can always undo exactly one.
    return _looks_like_formula(value.lstrip(_ESCAPE))


def _import_cell(value: str) -> str:
    """Undo `_export_cell`, so that an exported file imports back to the same members."""
    if value.startswith(_ESCAPE) and _needs_escape(value[1:]):
        return value[1:]
    return value


def _row_to_payload(row: dict[str, str]) -> dict[str, Any]:
    # An empty consent still goes in, so that each missing consent column is named.
    payload: dict[str, Any] = {"consent": {}}
    for column, raw in row.items():
        value = _import_cell(raw.strip())
        if value == "" or column in ("quiet_hours_start", "quiet_hours_end"):
            continue
        if column.startswith("consent_"):
            payload["consent"][column.removeprefix("consent_")] = value
        elif column in LIST_COLUMNS:
            payload[column] = [item.strip() for item in value.split(LIST_SEPARATOR) if item.strip()]
        else:
            payload[column] = value
    start, end = row.get("quiet_hours_start", "").strip(), row.get("quiet_hours_end", "").strip()
    if start or end:
        payload["quiet_hours"] = {"start": start, "end": end}
    return payload


def _csv_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts[:1] == ["consent"] and len(parts) > 1:
        return f"consent_{parts[1]}"
    if parts[:1] == ["quiet_hours"]:
        return "quiet_hours_" + parts[1] if len(parts) > 1 else "quiet_hours_start"
    if parts and parts[0] in LIST_COLUMNS:
        return parts[0]
    return ".".join(parts) or "row"


def parse_csv(text: str, *, policy: MemberPolicy, progress: Progress | None = None) -> ParsedFile:
    """Validate every row; collect every problem with its line number and column."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise _file_error(f"malformed CSV header ({exc})") from exc
    if not header:
        raise _file_error("the file is empty: a header line is required")
    header = [name.strip() for name in header]
    reader.fieldnames = header
    unknown = [name for name in header if name not in COLUMNS]
    missing = sorted(REQUIRED_COLUMNS - set(header))
    if unknown or missing or len(set(header)) != len(header):
        problems = [FieldProblem(field=name, reason="unknown column") for name in unknown]
        problems += [FieldProblem(field=name, reason="required column missing") for name in missing]
        if len(set(header)) != len(header):
            problems.append(FieldProblem(field="header", reason="a column appears twice"))
        raise InvalidInput(
            f"bad header: expected columns among {', '.join(COLUMNS)}", errors=problems
        )

    parsed = ParsedFile()
    seen_emails: dict[str, int] = {}
    try:
        for index, row in enumerate(reader):
            line = reader.line_num
            if index >= MAX_ROWS:
                raise _file_error(f"more than {MAX_ROWS} rows; split the file")
            if None in row or any(value is None for value in row.values()):
                parsed.errors.append(
                    ImportRowError(row=line, field="row", reason="wrong number of columns")
                )
            else:
                _parse_row(line, row, parsed, seen_emails, policy)
            if progress:
                progress(1)
    except csv.Error as exc:
        raise _file_error(f"malformed CSV near line {reader.line_num} ({exc})") from exc
    return parsed


def _parse_row(
    line: int,
    row: dict[str, str],
    parsed: ParsedFile,
    seen_emails: dict[str, int],
    policy: MemberPolicy,
) -> None:
    try:
        data = MemberCreate.model_validate(_row_to_payload(row))
    except ValidationError as exc:
        for error in exc.errors():
            reason = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            parsed.errors.append(
                ImportRowError(row=line, field=_csv_field(tuple(error["loc"])), reason=reason)
            )
        return
    if data.webhook_url is not None:
        try:
            check_webhook_url(data.webhook_url, allow_private=policy.allow_private_webhooks)
        except UnsafeURL as exc:
            parsed.errors.append(ImportRowError(row=line, field="webhook_url", reason=str(exc)))
            return
    if data.email is not None:
        if data.email in seen_emails:
            parsed.errors.append(
                ImportRowError(
                    row=line,
                    field="email",
                    reason=f"same email as line {seen_emails[data.email]}",
                )
            )
            return
        seen_emails[data.email] = line
    parsed.rows.append(ParsedRow(line=line, data=data))


def import_members(
    session: Session,
    raw: bytes,
    *,
    policy: MemberPolicy,
    actor: Principal,
    on_error: OnError = "abort",
    progress: Progress | None = None,
) -> ImportResult:
    """Validate the whole file, then upsert by email in this transaction.

    With `on_error="abort"` (the default) any bad row means nothing is written and a 422
    lists every problem; with `"skip"` the valid rows are written and the bad ones reported.
    """
    parsed = parse_csv(decode_csv(raw), policy=policy, progress=progress)
    if parsed.errors and on_error == "abort":
        raise InvalidInput(
            f"{len(parsed.errors)} problem(s) in the file; nothing was imported",
            errors=[FieldProblem(field=e.field, reason=e.reason, row=e.row) for e in parsed.errors],
        )
    emails = [row.data.email for row in parsed.rows if row.data.email is not None]
    existing: dict[str, Member] = {}
    for start in range(0, len(emails), 500):
        chunk = emails[start : start + 500]
        for member in session.scalars(select(Member).where(Member.email.in_(chunk))):
            assert member.email is not None
            existing[member.email] = member

    # A row with several problems is still one skipped row.
    skipped = len({error.row for error in parsed.errors})
    result = ImportResult(created=0, updated=0, skipped=skipped, errors=parsed.errors)
    for row in parsed.rows:
        values = member_columns(row.data)
        found = existing.get(row.data.email) if row.data.email else None
        if found is None:
            member = Member(id=uuid7(), **values)
            session.add(member)
            result.created += 1
            action = "member.import.create"
        else:
            member = found
            for column, value in values.items():
                setattr(member, column, value)
            result.updated += 1
            action = "member.import.update"
        if member.webhook_url is None:
            member.webhook_secret_encrypted = None
        elif member.webhook_secret_encrypted is None:
            secret = new_webhook_secret()
            member.webhook_secret_encrypted = policy.secret_box.encrypt(secret)
            result.webhook_secrets.append(
                ImportedSecret(row=row.line, member_id=member.id, webhook_secret=secret)
            )
        record(session, actor, action, "member", member.id, {"row": row.line})
        if progress:
            progress(1)
    try:
        session.flush()
    except IntegrityError as exc:
        # Another request created a member with one of these addresses since we looked.
        raise Conflict(
            "a member with one of these email addresses was added meanwhile; import again",
            errors=[FieldProblem(field="email", reason="already used by another member")],
        ) from exc
    record(
        session,
        actor,
        "member.import",
        "member",
        None,
        {"created": result.created, "updated": result.updated, "skipped": result.skipped},
    )
    return result


def _export_cell(value: str) -> str:
    return _ESCAPE + value if _needs_escape(value) else value


def _export_row(member: Member) -> list[str]:
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list):
            return LIST_SEPARATOR.join(value)
        if isinstance(value, time):
            # HH:MM as documented, but never at the cost of the seconds (round trip).
            exact = value.second == 0 and value.microsecond == 0
            return value.isoformat(timespec="minutes" if exact else "auto")
        return str(value)

    values = {
        **{column: getattr(member, column, None) for column in COLUMNS},
        "consent_given_at": member.consent_given_at.isoformat(),
    }
    return [_export_cell(text(values[column])) for column in COLUMNS]


def export_csv(session: Session, filters: MemberFilters) -> Iterator[str]:
    """The filtered members as CSV, in chunks (UTF-8 text; import-compatible columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for count, member in enumerate(iter_members(session, filters), 1):
        writer.writerow(_export_row(member))
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
