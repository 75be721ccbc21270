"""CSV import (POST /v1/members/import) and export (GET /v1/members/export)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.models import AuditEntry, Member, Role
from app.security import SecretBox
from tests.support.factories import PUBLIC_WEBHOOK, assert_problem, member_payload

HEADER = (
    "network,name,organization,title,country,languages,themes,tags,email,webhook_url,timezone,"
    "quiet_hours_start,quiet_hours_end,status,consent_given_at,consent_method,consent_note"
)
COLUMNS = HEADER.split(",")
IMPORT = "/v1/members/import"
EXPORT = "/v1/members/export"


def row(**overrides: str) -> dict[str, str]:
    """A valid CSV row as a dict of cells; override any cell."""
    cells = {
        "network": "editors",
        "name": "Leila Benali",
        "organization": "Le Quotidien",
        "title": "Editor-in-chief",
        "country": "MA",
        "languages": "fr;ar;en",
        "themes": "religious-hatred;intercultural-dialogue",
        "tags": "maghreb;print",
        "email": f"leila.{uuid.uuid4().hex[:8]}@example.org",
        "webhook_url": "",
        "timezone": "Africa/Casablanca",
        "quiet_hours_start": "22:00",
        "quiet_hours_end": "07:00",
        "status": "active",
        "consent_given_at": "2026-01-15T10:00:00+00:00",
        "consent_method": "written",
        "consent_note": "",
    }
    cells.update(overrides)
    return cells


def csv_text(*rows: dict[str, str], columns: list[str] | None = None) -> str:
    columns = columns or COLUMNS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for cells in rows:
        writer.writerow([cells.get(column, "") for column in columns])
    return buffer.getvalue()


def post_csv(
    client: TestClient,
    headers: dict[str, str],
    body: str | bytes,
    *,
    on_error: str | None = None,
    content_type: str = "text/csv",
) -> httpx2.Response:
    params = {"on_error": on_error} if on_error else None
    return client.post(
        IMPORT,
        content=body.encode() if isinstance(body, str) else body,
        params=params,
        headers={**headers, "Content-Type": content_type},
    )


def list_members(
    client: TestClient, headers: dict[str, str], **filters: str
) -> list[dict[str, Any]]:
    response = client.get("/v1/members", params={"limit": "500", **filters}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


def by_email(members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["email"]: m for m in members}


def member_count(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Member)) or 0


def error_pairs(body: dict[str, Any]) -> set[tuple[int | None, str]]:
    return {(e.get("row"), e["field"]) for e in body["errors"]}


def parse_export(response: httpx2.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0] == HEADER
    return list(csv.DictReader(io.StringIO(response.text, newline="")))


# --- import: the happy path ------------------------------------------------------------


def test_import_creates_members_with_every_column(client, operator):
    first = row(
        name="Leila Benali",
        country="ma",
        languages="FR; ar ;en",
        themes="religious-hatred;intercultural-dialogue",
        tags="Maghreb;print",
        email="Leila@Example.org",
        consent_method="email",
        consent_note='Agreed by phone, then "in writing"\nsee file 12',
    )
    second = row(
        network="personalities",
        name="Omar Haddad",
        organization="",
        title="",
        country="TN",
        languages="ar",
        themes="",
        tags="",
        email="omar@example.org",
        timezone="Africa/Tunis",
        quiet_hours_start="",
        quiet_hours_end="",
        status="paused",
        consent_given_at="2025-06-01T09:30:00+02:00",
        consent_method="online-form",
    )
    third = row(name="Sara Idrissi", email="sara@example.org", languages="", themes="citizenship")

    response = post_csv(client, operator, csv_text(first, second, third))

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"], result["skipped"]) == (3, 0, 0)
    assert result["errors"] == []
    assert result["webhook_secrets"] == []

    members = by_email(list_members(client, operator))
    assert set(members) == {"leila@example.org", "omar@example.org", "sara@example.org"}

    leila = members["leila@example.org"]
    assert leila["network"] == "editors"
    assert leila["country"] == "MA"
    assert leila["languages"] == ["fr", "ar", "en"]
    assert leila["themes"] == ["religious-hatred", "intercultural-dialogue"]
    assert leila["tags"] == ["maghreb", "print"]
    assert leila["organization"] == "Le Quotidien"
    assert leila["timezone"] == "Africa/Casablanca"
    assert leila["quiet_hours"] == {"start": "22:00:00", "end": "07:00:00"}
    assert leila["consent"]["method"] == "email"
    assert leila["consent"]["note"] == 'Agreed by phone, then "in writing"\nsee file 12'
    assert datetime.fromisoformat(leila["consent"]["given_at"]) == datetime(
        2026, 1, 15, 10, 0, tzinfo=UTC
    )

    omar = members["omar@example.org"]
    assert omar["network"] == "personalities"
    assert omar["organization"] is None
    assert omar["title"] is None
    assert omar["themes"] == []
    assert omar["tags"] == []
    assert omar["quiet_hours"] is None
    assert omar["status"] == "paused"
    assert omar["consent"]["method"] == "online-form"
    assert omar["consent"]["note"] is None
    assert datetime.fromisoformat(omar["consent"]["given_at"]) == datetime(
        2025, 6, 1, 7, 30, tzinfo=UTC
    )

    # An empty list cell means the default, like a missing field in the JSON API.
    assert members["sara@example.org"]["languages"] == ["en"]
    assert members["sara@example.org"]["themes"] == ["citizenship"]


def test_import_accepts_a_byte_order_mark_and_crlf_line_ends(client, operator):
    body = csv_text(row(email="bom@example.org")).replace("\n", "\r\n")
    response = post_csv(client, operator, "\ufeff".encode() + body.encode())

    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1
    assert [m["email"] for m in list_members(client, operator)] == ["bom@example.org"]


def test_import_with_only_the_required_columns(client, operator):
    columns = ["network", "name", "country", "email", "consent_given_at", "consent_method"]
    response = post_csv(client, operator, csv_text(row(email="min@example.org"), columns=columns))

    assert response.status_code == 200, response.text
    [member] = list_members(client, operator)
    assert member["email"] == "min@example.org"
    assert member["languages"] == ["en"]
    assert member["timezone"] == "UTC"
    assert member["status"] == "active"
    assert member["organization"] is None


# --- upsert by email -------------------------------------------------------------------


def test_second_import_updates_by_email_case_insensitively(client, operator):
    first = post_csv(
        client,
        operator,
        csv_text(
            row(name="Alice Old", email="alice@example.org", country="MA"),
            row(name="Bob", email="bob@example.org"),
        ),
    )
    assert first.status_code == 200, first.text
    before = by_email(list_members(client, operator))

    second = post_csv(
        client,
        operator,
        csv_text(
            row(name="Alice New", email="ALICE@Example.ORG", country="TN", tags="updated"),
            row(name="Carol", email="carol@example.org"),
        ),
    )

    assert second.status_code == 200, second.text
    result = second.json()
    assert (result["created"], result["updated"], result["skipped"]) == (1, 1, 0)
    after = by_email(list_members(client, operator))
    assert set(after) == {"alice@example.org", "bob@example.org", "carol@example.org"}
    alice = after["alice@example.org"]
    assert alice["id"] == before["alice@example.org"]["id"]
    assert (alice["name"], alice["country"], alice["tags"]) == ("Alice New", "TN", ["updated"])
    assert after["bob@example.org"] == before["bob@example.org"]


def test_import_updates_a_member_created_through_the_api(client, operator):
    created = client.post(
        "/v1/members", json=member_payload(email="dina@example.org"), headers=operator
    )
    assert created.status_code == 201, created.text

    response = post_csv(
        client, operator, csv_text(row(email="Dina@example.org", name="Dina Renamed"))
    )

    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["updated"]) == (0, 1)
    [member] = list_members(client, operator)
    assert (member["id"], member["name"]) == (created.json()["id"], "Dina Renamed")


# --- all or nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "field"),
    [
        ({"country": "XX"}, "country"),
        ({"languages": "fr;not a tag"}, "languages"),
        ({"themes": "cooking"}, "themes"),
        ({"tags": "Bad Tag!"}, "tags"),
        ({"email": "not-an-email"}, "email"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"webhook_url": "https://10.0.0.1/x"}, "webhook_url"),
        ({"webhook_url": "https://169.254.169.254/latest/meta-data"}, "webhook_url"),
        ({"webhook_url": "http://93.184.215.14/hook"}, "webhook_url"),
        ({"webhook_url": "ftp://93.184.215.14/hook"}, "webhook_url"),
        ({"network": "journalists"}, "network"),
        ({"name": ""}, "name"),
        ({"status": "asleep"}, "status"),
        ({"quiet_hours_start": "25:00"}, "quiet_hours_start"),
        ({"quiet_hours_end": ""}, "quiet_hours_end"),
        ({"consent_given_at": "2026-01-15T10:00:00"}, "consent_given_at"),
        ({"consent_given_at": ""}, "consent_given_at"),
        ({"consent_method": "telepathy"}, "consent_method"),
        ({"consent_given_at": "", "consent_method": ""}, "consent_method"),
        ({"email": "", "webhook_url": ""}, "row"),
    ],
)
def test_bad_rows_abort_the_whole_import(
    client, operator, session_factory, cells: dict[str, str], field: str
):
    existing = client.post("/v1/members", json=member_payload(), headers=operator)
    assert existing.status_code == 201, existing.text
    good_emails = ["good1@example.org", "good2@example.org", "good3@example.org"]
    body = csv_text(
        row(email=good_emails[0]),
        row(**cells),  # line 3
        row(email=good_emails[1]),
        row(country="Morocco"),  # line 5
        row(email=good_emails[2]),
    )

    response = post_csv(client, operator, body)

    problem = assert_problem(response, 422)
    assert "nothing was imported" in problem["detail"]
    assert (3, field) in error_pairs(problem), problem
    assert (5, "country") in error_pairs(problem), problem
    assert {e["row"] for e in problem["errors"]} == {3, 5}
    assert all(e["reason"] for e in problem["errors"])
    assert member_count(session_factory) == 1
    emails = {m["email"] for m in list_members(client, operator)}
    assert emails.isdisjoint(good_emails)


def test_aborted_import_leaves_no_audit_entry_and_no_update(client, operator, admin):
    assert post_csv(client, operator, csv_text(row(email="kept@example.org"))).status_code == 200

    response = post_csv(
        client,
        operator,
        csv_text(row(email="kept@example.org", name="Should Not Stick"), row(country="ZZ")),
    )

    assert_problem(response, 422, "country")
    [member] = list_members(client, operator)
    assert member["name"] == "Leila Benali"
    audit = client.get("/v1/audit", params={"action": "member.import"}, headers=admin)
    assert audit.status_code == 200
    assert len(audit.json()["items"]) == 1  # only the first, successful import


def test_every_problem_of_a_row_is_listed(client, operator):
    response = post_csv(
        client, operator, csv_text(row(country="XX", timezone="Nowhere", themes="cooking"))
    )

    problem = assert_problem(response, 422)
    assert error_pairs(problem) == {(2, "country"), (2, "timezone"), (2, "themes")}


def test_skip_imports_the_good_rows_and_reports_the_bad(client, operator, session_factory):
    body = csv_text(
        row(email="ok1@example.org"),
        row(email="bad1@example.org", country="XX", timezone="Nowhere"),  # line 3: 2 problems
        row(email="ok2@example.org"),
        row(email="bad2@example.org", webhook_url="https://10.0.0.1/x"),  # line 5
    )

    response = post_csv(client, operator, body, on_error="skip")

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"]) == (2, 0)
    assert result["skipped"] == 2  # rows, not problems
    assert error_pairs(result) == {(3, "country"), (3, "timezone"), (5, "webhook_url")}
    assert member_count(session_factory) == 2
    emails = {m["email"] for m in list_members(client, operator)}
    assert emails == {"ok1@example.org", "ok2@example.org"}


def test_abort_is_the_default_and_can_be_named(client, operator, session_factory):
    body = csv_text(row(), row(country="XX"))
    assert_problem(post_csv(client, operator, body, on_error="abort"), 422, "country")
    assert member_count(session_factory) == 0


def test_unknown_on_error_value_is_422(client, operator, session_factory):
    response = post_csv(client, operator, csv_text(row()), on_error="ignore")
    assert_problem(response, 422, "on_error")
    assert member_count(session_factory) == 0


def test_duplicate_email_within_the_file(client, operator, session_factory):
    body = csv_text(
        row(email="twice@example.org"),
        row(email="other@example.org"),
        row(email="Twice@Example.org"),
    )

    response = post_csv(client, operator, body)

    problem = assert_problem(response, 422)
    assert error_pairs(problem) == {(4, "email")}
    assert "line 2" in problem["errors"][0]["reason"]
    assert member_count(session_factory) == 0


def test_duplicate_email_is_skipped_once_with_skip(client, operator):
    body = csv_text(row(email="twice@example.org", name="First"), row(email="twice@example.org"))

    response = post_csv(client, operator, body, on_error="skip")

    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["skipped"]) == (1, 1)
    [member] = list_members(client, operator)
    assert member["name"] == "First"


# --- malformed files -------------------------------------------------------------------


def test_unknown_column_is_422(client, operator, session_factory):
    body = csv_text(row(), columns=[*COLUMNS, "phone"])

    problem = assert_problem(post_csv(client, operator, body), 422, "phone")

    assert any(e["reason"] == "unknown column" for e in problem["errors"])
    assert member_count(session_factory) == 0


@pytest.mark.parametrize("missing", ["network", "name", "country", "consent_method"])
def test_missing_required_column_is_422(client, operator, session_factory, missing: str):
    columns = [c for c in COLUMNS if c != missing]

    problem = assert_problem(post_csv(client, operator, csv_text(row(), columns=columns)), 422)

    assert (None, missing) in error_pairs(problem)
    assert member_count(session_factory) == 0


def test_repeated_column_is_422(client, operator, session_factory):
    body = csv_text(row(), columns=[*COLUMNS, "email"])
    assert_problem(post_csv(client, operator, body), 422, "header")
    assert member_count(session_factory) == 0


def test_rows_with_the_wrong_number_of_cells(client, operator, session_factory):
    good = csv_text(row(email="fine@example.org")).splitlines()[1]
    body = "\n".join(
        [HEADER, good, good.replace("fine@", "short@").rsplit(",", 2)[0], good + ",extra", ""]
    )

    problem = assert_problem(post_csv(client, operator, body), 422)

    assert error_pairs(problem) == {(3, "row"), (4, "row")}
    assert member_count(session_factory) == 0


def test_non_utf8_body_is_422_naming_the_body(client, operator, session_factory):
    body = csv_text(row(name="Hélène Dupré")).encode("latin-1")

    problem = assert_problem(post_csv(client, operator, body), 422, "body")

    assert "UTF-8" in problem["detail"]
    assert member_count(session_factory) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(HEADER + '\neditors,"Leila, unterminated,MA\n', id="unterminated-quote"),
        pytest.param(HEADER + '\neditors,"Lei"la,MA\n', id="text-after-closing-quote"),
        pytest.param(csv_text(row(name="Lei\x00la")), id="nul"),
        pytest.param(HEADER.replace("name", '"name') + "\n", id="header-quote"),
    ],
)
def test_malformed_csv_is_422_not_500(client, operator, session_factory, body: str):
    problem = assert_problem(post_csv(client, operator, body), 422, "body")
    assert problem["detail"].startswith("body:")
    assert member_count(session_factory) == 0


@pytest.mark.parametrize("body", ["", "\ufeff", "\n\n"])
def test_empty_body_is_422(client, operator, body: str):
    problem = assert_problem(post_csv(client, operator, body), 422, "body")
    assert "empty" in problem["detail"]


def test_header_only_imports_nothing(client, operator, session_factory):
    response = post_csv(client, operator, HEADER + "\n")

    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["updated"]) == (0, 0)
    assert member_count(session_factory) == 0


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", ""])
def test_wrong_content_type_is_415(client, operator, session_factory, content_type: str):
    response = post_csv(client, operator, csv_text(row()), content_type=content_type)
    assert_problem(response, 415)
    assert member_count(session_factory) == 0


@pytest.mark.parametrize("content_type", ["text/csv; charset=utf-8", "application/csv"])
def test_csv_content_types_are_accepted(client, operator, content_type: str):
    response = post_csv(client, operator, csv_text(row()), content_type=content_type)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1


# --- webhook secrets -------------------------------------------------------------------


def test_new_webhook_members_get_their_secret_once(
    client, operator, session_factory, settings: Settings
):
    body = csv_text(
        row(email="hook1@example.org", webhook_url=PUBLIC_WEBHOOK),
        row(email="plain@example.org"),
        row(email="", webhook_url=PUBLIC_WEBHOOK + "/2"),
    )

    response = post_csv(client, operator, body)

    assert response.status_code == 200, response.text
    secrets = response.json()["webhook_secrets"]
    assert sorted(s["row"] for s in secrets) == [2, 4]
    assert all(s["webhook_secret"].startswith("whsec_") for s in secrets)
    assert len({s["webhook_secret"] for s in secrets}) == 2
    members = {m["id"]: m for m in list_members(client, operator)}
    by_row = {s["row"]: s for s in secrets}
    assert members[by_row[2]["member_id"]]["email"] == "hook1@example.org"
    assert members[by_row[4]["member_id"]]["webhook_url"] == PUBLIC_WEBHOOK + "/2"
    assert "webhook_secret" not in json.dumps(list(members.values()))

    # What is shown is what signs: the stored (encrypted) secret is the same one.
    box = SecretBox(settings.secret)
    with session_factory() as session:
        for secret in secrets:
            member = session.get(Member, uuid.UUID(secret["member_id"]))
            assert member is not None
            assert member.webhook_secret_encrypted is not None
            assert box.decrypt(member.webhook_secret_encrypted) == secret["webhook_secret"]
            assert secret["webhook_secret"].encode() not in member.webhook_secret_encrypted

    # Importing the same file again updates the webhook member: no new secret is issued.
    again = post_csv(
        client, operator, csv_text(row(email="hook1@example.org", webhook_url=PUBLIC_WEBHOOK))
    )
    assert again.status_code == 200, again.text
    assert (again.json()["updated"], again.json()["webhook_secrets"]) == (1, [])


def test_adding_a_webhook_by_import_issues_a_secret_and_removing_it_clears_it(
    client, operator, session_factory
):
    assert post_csv(client, operator, csv_text(row(email="x@example.org"))).status_code == 200

    added = post_csv(
        client, operator, csv_text(row(email="x@example.org", webhook_url=PUBLIC_WEBHOOK))
    )
    assert added.status_code == 200, added.text
    [secret] = added.json()["webhook_secrets"]
    assert secret["webhook_secret"].startswith("whsec_")

    removed = post_csv(client, operator, csv_text(row(email="x@example.org")))
    assert removed.status_code == 200, removed.text
    with session_factory() as session:
        member = session.get(Member, uuid.UUID(secret["member_id"]))
        assert member is not None
        assert (member.webhook_url, member.webhook_secret_encrypted) == (None, None)


# --- export ----------------------------------------------------------------------------


def create(client: TestClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/members", json=member_payload(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_export_applies_the_list_filters(client, operator):
    wanted = {
        create(client, operator, network="editors", country="MA")["email"],
        create(client, operator, network="editors", country="MA", status="paused")["email"],
    }
    create(client, operator, network="editors", country="TN")
    create(client, operator, network="personalities", country="MA")

    response = client.get(EXPORT, params={"network": "editors", "country": "MA"}, headers=operator)

    rows = parse_export(response)
    assert {r["email"] for r in rows} == wanted
    assert {(r["network"], r["country"]) for r in rows} == {("editors", "MA")}
    assert "attachment" in response.headers["content-disposition"]

    paused = parse_export(client.get(EXPORT, params={"status": "paused"}, headers=operator))
    assert [r["status"] for r in paused] == ["paused"]


def test_export_with_no_match_is_just_the_header(client, operator):
    create(client, operator, country="MA")
    response = client.get(EXPORT, params={"country": "FR"}, headers=operator)
    assert parse_export(response) == []
    assert response.text.strip() == HEADER


def test_export_invalid_filter_is_422(client, operator):
    assert_problem(client.get(EXPORT, params={"network": "bloggers"}, headers=operator), 422)


def test_export_cells_use_the_import_format(client, operator):
    create(
        client,
        operator,
        email="cells@example.org",
        languages=["fr", "ar"],
        quiet_hours={"start": "22:00", "end": "07:00"},
        consent={"given_at": "2026-01-15T10:00:00+01:00", "method": "written", "note": "a, b"},
    )

    [exported] = parse_export(client.get(EXPORT, headers=operator))

    assert exported["languages"] == "fr;ar"
    assert exported["themes"] == "religious-hatred;intercultural-dialogue"
    assert (exported["quiet_hours_start"], exported["quiet_hours_end"]) == ("22:00", "07:00")
    assert datetime.fromisoformat(exported["consent_given_at"]) == datetime(
        2026, 1, 15, 9, 0, tzinfo=UTC
    )
    assert exported["consent_note"] == "a, b"
    assert exported["webhook_url"] == ""


def comparable(member: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in member.items() if k not in ("id", "created_at", "updated_at")}


def test_export_then_import_into_an_empty_database_reproduces_the_members(
    client, operator, session_factory
):
    create(client, operator)
    create(
        client,
        operator,
        network="personalities",
        name="=cmd|' /C calc'!A0",
        organization="@SUM(1+1)",
        title="-2+3",
        country="TN",
        languages=["ar"],
        themes=[],
        tags=[],
        email="-dash@example.org",
        webhook_url=PUBLIC_WEBHOOK,
        timezone="Africa/Tunis",
        quiet_hours=None,
        status="paused",
        consent={
            "given_at": "2025-06-01T09:30:00+02:00",
            "method": "verbal",
            "note": 'line one, "quoted"\nline two',
        },
    )
    create(client, operator, name="'=already quoted", email=None, webhook_url=PUBLIC_WEBHOOK)
    create(
        client,
        operator,
        name="O'Brien",
        title="'",
        tags=[],
        quiet_hours={"start": "21:30:15", "end": "06:45"},
    )
    before = sorted(
        (comparable(m) for m in list_members(client, operator)), key=lambda m: m["name"]
    )
    exported = client.get(EXPORT, headers=operator)
    assert len(parse_export(exported)) == 4

    with session_factory() as session:
        session.execute(delete(Member))
        session.commit()
    assert member_count(session_factory) == 0

    response = post_csv(client, operator, exported.content)

    assert response.status_code == 200, response.text
    assert response.json()["created"] == 4
    after = sorted((comparable(m) for m in list_members(client, operator)), key=lambda m: m["name"])
    assert after == before


def test_export_neutralises_formulas(client, operator):
    create(
        client,
        operator,
        name='=HYPERLINK("http://evil.example","x")',
        title="+1",
        organization="@A1",
    )
    create(client, operator, name="Plain Name", title="Chief - editor")

    rows = {r["email"]: r for r in parse_export(client.get(EXPORT, headers=operator))}

    formula, plain = sorted(rows.values(), key=lambda r: r["name"])
    assert formula["name"] == '\'=HYPERLINK("http://evil.example","x")'
    assert formula["title"] == "'+1"
    assert formula["organization"] == "'@A1"
    assert (plain["name"], plain["title"]) == ("Plain Name", "Chief - editor")
    for cells in rows.values():
        assert not any(value.startswith(("=", "+", "-", "@")) for value in cells.values())


# Formulas in disguise: after leading whitespace (ASCII, no-break, ideographic), behind a
# zero-width space, in full-width forms (NFKC turns ＝ into =), or after a tab or CR.
DISGUISED_FORMULAS = [
    " =1+1",
    "   @SUM(A1)",
    "\u00a0+1",
    "\u3000-1",
    '\u200b=HYPERLINK("x")',
    '＝HYPERLINK("http://evil.example")',
    "＋1",
    "－1",
    "＠A1",
    "\u3000＝1",
    "'＝1",
]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        *(("organization", v) for v in DISGUISED_FORMULAS),
        # Only the note may hold control characters.
        ("consent_note", "\t=1"),
        ("consent_note", "\r\n=1"),
        ("consent_note", "\tplain"),
    ],
)
def test_export_neutralises_disguised_formulas_and_import_restores_them(
    client, operator, session_factory, column, value
):
    if column == "consent_note":
        consent = {"given_at": "2026-01-15T10:00:00+00:00", "method": "written", "note": value}
        created = create(client, operator, consent=consent, title="Chief - editor")
        assert created["consent"]["note"] == value
    else:
        created = create(client, operator, organization=value, title="Chief - editor")
        assert created["organization"] == value

    exported = client.get(EXPORT, headers=operator)
    [cells] = parse_export(exported)

    assert cells[column] == "'" + value
    assert cells["title"] == "Chief - editor"  # a dash inside is no formula
    # And the escape is undone on the way back in.
    with session_factory() as session:
        session.execute(delete(Member))
        session.commit()
    response = post_csv(client, operator, exported.content)
    assert response.status_code == 200, response.text
    [member] = list_members(client, operator)
    restored = member["consent"]["note"] if column == "consent_note" else member[column]
    assert restored == value


@pytest.mark.parametrize("value", ["Le ＝ Quotidien", "＇=1", "O'Brien", "a=b", "\u200bNews"])
def test_export_leaves_text_that_is_no_formula(client, operator, value):
    create(client, operator, organization=value)

    [cells] = parse_export(client.get(EXPORT, headers=operator))

    assert cells["organization"] == value


@pytest.mark.usefixtures("session_factory")
def test_export_streams_more_than_one_chunk(client, operator):
    body = csv_text(*(row(email=f"m{i}@example.org") for i in range(1203)))
    assert post_csv(client, operator, body).json()["created"] == 1203

    rows = parse_export(client.get(EXPORT, headers=operator))

    assert len(rows) == 1203
    assert len({r["email"] for r in rows}) == 1203


# --- who may -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("POST", IMPORT), ("GET", EXPORT)], ids=["import", "export"]
)
def test_viewer_is_403_and_no_key_is_401(
    client, auth: Callable[[Role], dict[str, str]], session_factory, method: str, path: str
):
    body = csv_text(row()).encode()
    csv_headers = {"Content-Type": "text/csv"}

    viewer = client.request(
        method, path, content=body, headers={**auth(Role.VIEWER), **csv_headers}
    )
    anonymous = client.request(method, path, content=body, headers=csv_headers)
    wrong_key = client.request(
        method, path, content=body, headers={"Authorization": "Bearer rrmm_nope", **csv_headers}
    )

    assert_problem(viewer, 403)
    assert_problem(anonymous, 401)
    assert_problem(wrong_key, 401)
    assert "Bearer" in anonymous.headers["www-authenticate"]
    assert "email" not in viewer.text  # no CSV leaks out
    assert member_count(session_factory) == 0


def test_admin_may_import_and_export(client, admin):
    assert post_csv(client, admin, csv_text(row(email="adm@example.org"))).status_code == 200
    assert [r["email"] for r in parse_export(client.get(EXPORT, headers=admin))] == [
        "adm@example.org"
    ]


# --- audit -----------------------------------------------------------------------------


def test_import_is_audited_with_counts_and_no_contact_details(client, operator, admin):
    assert post_csv(client, operator, csv_text(row(email="old@example.org"))).status_code == 200
    body = csv_text(
        row(email="Old@Example.org", name="Updated"),
        row(email="new@example.org", webhook_url=PUBLIC_WEBHOOK),
        row(email="bad@example.org", country="XX"),
    )
    assert post_csv(client, operator, body, on_error="skip").status_code == 200

    response = client.get("/v1/audit", params={"limit": "500"}, headers=admin)

    assert response.status_code == 200, response.text
    entries = response.json()["items"]
    imports = [e for e in entries if e["action"] == "member.import"]
    assert [e["details"] for e in imports] == [
        {"created": 1, "updated": 1, "skipped": 1},
        {"created": 1, "updated": 0, "skipped": 0},
    ]
    assert all(e["actor"] == "test-operator" and e["actor_key_id"] for e in imports)
    per_member = [e["action"] for e in entries if e["action"].startswith("member.import.")]
    assert sorted(per_member) == [
        "member.import.create",
        "member.import.create",
        "member.import.update",
    ]
    dump = response.text.lower()
    for needle in ("@example.org", "old@", "new@", "bad@", PUBLIC_WEBHOOK, "whsec_"):
        assert needle.lower() not in dump
    assert "@" not in dump


def test_audit_table_holds_no_email_addresses(client, operator, session_factory):
    body = csv_text(row(email="secret.person@example.org"))
    assert post_csv(client, operator, body).status_code == 200

    with session_factory() as session:
        entries = list(
            session.scalars(select(AuditEntry).where(AuditEntry.object_type == "member"))
        )
    assert {e.action for e in entries} == {"member.import", "member.import.create"}
    assert "@" not in json.dumps([e.details for e in entries])
