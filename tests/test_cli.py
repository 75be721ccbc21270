"""The `rrmm` command line, run in-process against the test database."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from app import migrate
from app.cli.main import cli
from app.cli.supervisor import banner, run_environment
from app.config import Settings, get_settings
from app.models import ApiKey, AuditEntry, Member, Person
from app.people import service as people
from tests.support.factories import PUBLIC_WEBHOOK, assert_problem

Run = Callable[..., Result]

HEADER = "network,name,country,email,webhook_url,languages,consent_given_at,consent_method\n"


def csv_line(email: str, *, country: str = "MA", webhook_url: str = "") -> str:
    consent = "2026-01-15T10:00:00+00:00,written"
    return f"editors,Leila Benali,{country},{email},{webhook_url},fr;ar,{consent}\n"


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str | None]:
    return {
        "RRMM_MODE": "production",
        "RRMM_DATABASE_URL": settings.database_url,
        "RRMM_SECRET_KEY": settings.secret,
        "RRMM_BROKER_URL": settings.broker_url,
        "RRMM_VAR_DIR": str(settings.var_dir),
        "RRMM_WEBHOOK_ALLOW_PRIVATE": "false",
    }


@pytest.fixture
def run(engine, cli_env: dict[str, str | None]) -> Iterator[Run]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """Invoke `rrmm ARGS…` with the test settings (read afresh from the environment)."""
    runner = CliRunner()

    def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
        get_settings.cache_clear()
        try:
            return runner.invoke(cli, list(args), env={**cli_env, **(env or {})})
        finally:
            get_settings.cache_clear()

    yield invoke
    get_settings.cache_clear()


def count(session_factory: sessionmaker[Session], model: type[ApiKey | Member]) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def create_key(run: Run, name: str, role: str) -> str:
    result = run("keys", "create", "--name", name, "--role", role)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.strip()


# --- keys ------------------------------------------------------------------------------


def test_keys_create_prints_the_key_alone_on_stdout(run: Run, session_factory):
    result = run("keys", "create", "--name", "alert desk", "--role", "operator")

    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    [key] = lines
    assert key.startswith("rrmm_")
    assert len(key) > 40
    assert key.strip() == key
    # The rest of what the command says goes to stderr, so `KEY=$(rrmm keys create …)` works.
    assert key not in result.stderr
    assert "created key" in result.stderr
    with session_factory() as session:
        [stored] = session.scalars(select(ApiKey)).all()
    assert (stored.name, stored.role) == ("alert desk", "operator")
    assert str(stored.id) in result.stderr


@pytest.mark.parametrize(
    ("role", "can_list_members", "can_read_audit"),
    [("admin", True, True), ("operator", True, False), ("viewer", False, False)],
)
def test_created_key_authenticates_with_its_role(
    run: Run, client: TestClient, role: str, can_list_members: bool, can_read_audit: bool
):
    key = create_key(run, f"{role} robot", role)
    headers = {"Authorization": f"Bearer {key}"}

    members = client.get("/v1/members", headers=headers)
    audit = client.get("/v1/audit", headers=headers)

    assert members.status_code == (200 if can_list_members else 403), members.text
    assert audit.status_code == (200 if can_read_audit else 403), audit.text
    if can_read_audit:
        [entry] = [e for e in audit.json()["items"] if e["action"] == "api_key.create"]
        assert (entry["actor"], entry["details"]) == ("cli", {"role": role})


def test_the_key_itself_is_not_stored(run: Run, session_factory):
    key = create_key(run, "hashed", "admin")

    with session_factory() as session:
        [stored] = session.scalars(select(ApiKey)).all()
        rows = session.execute(text("SELECT * FROM api_keys")).all()
        audit = session.execute(text("SELECT * FROM audit_entries")).all()

    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key.startswith(stored.key_prefix)
    assert len(stored.key_prefix) < len(key) // 2
    for value in [*rows[0], *(cell for entry in audit for cell in entry)]:
        assert key not in str(value)
        assert key[len(stored.key_prefix) :] not in str(value)


@pytest.mark.parametrize(
    "args",
    [
        ("--name", "x", "--role", "superuser"),
        ("--name", "x", "--role", ""),
        ("--name", "x"),
        ("--role", "admin"),
        ("--name", "   ", "--role", "admin"),
        ("--name", "n" * 101, "--role", "admin"),
    ],
    ids=["unknown-role", "empty-role", "no-role", "no-name", "blank-name", "long-name"],
)
def test_keys_create_refuses_bad_arguments(run: Run, session_factory, args: tuple[str, ...]):
    result = run("keys", "create", *args)

    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert count(session_factory, ApiKey) == 0


def test_keys_list_shows_names_and_roles_but_not_the_keys(run: Run):
    keys = {
        create_key(run, "first robot with a rather long name", "operator"): "operator",
        create_key(run, "second [bold]robot[/bold]", "viewer"): "viewer",
    }

    result = run("keys", "list")

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "first robot with a rather long name" in result.stdout
    assert "second [bold]robot[/bold]" in result.stdout
    for key, role in keys.items():
        assert key not in result.stdout
        assert key not in result.stderr
        [line] = [line for line in result.stdout.splitlines() if key[:12] in line]
        assert role in line


def test_keys_list_prints_whole_ids_that_revoke_accepts(run: Run, session_factory):
    create_key(run, "to revoke", "operator")
    with session_factory() as session:
        [key_id] = session.scalars(select(ApiKey.id)).all()

    listed = run("keys", "list")

    assert str(key_id) in listed.stdout
    revoke = run("keys", "revoke", str(key_id))
    assert revoke.exit_code == 0, revoke.stderr
    [line] = run("keys", "list").stdout.splitlines()
    assert line.split("\t")[-1].startswith("20")  # revoked at


def test_keys_revoke_makes_the_api_refuse_the_key(run: Run, client: TestClient, session_factory):
    key = create_key(run, "soon revoked", "operator")
    other = create_key(run, "kept", "operator")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/members", headers=headers).status_code == 200
    with session_factory() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "soon revoked"))

    result = run("keys", "revoke", str(key_id))

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert f"revoked {key_id}" in result.stderr
    assert_problem(client.get("/v1/members", headers=headers), 401)
    assert client.get("/v1/members", headers={"Authorization": f"Bearer {other}"}).status_code == (
        200
    )
    # Revoking twice is harmless.
    assert run("keys", "revoke", str(key_id)).exit_code == 0


def test_keys_revoke_unknown_or_malformed_id(run: Run):
    unknown = run("keys", "revoke", str(uuid.uuid4()))
    malformed = run("keys", "revoke", "not-a-uuid")

    assert unknown.exit_code == 1
    assert "no such API key" in unknown.stderr
    assert malformed.exit_code == 2


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "message"),
    [(None, "RRMM_SECRET_KEY is required"), ("changeme-" + "x1y2z3" * 6, "placeholder")],
    ids=["missing", "placeholder"],
)
def test_bad_configuration_exits_2_without_echoing_the_secret(
    run: Run, session_factory, secret: str | None, message: str
):
    result = run(
        "keys", "create", "--name", "x", "--role", "admin", env={"RRMM_SECRET_KEY": secret}
    )

    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    if secret is not None:
        assert secret[-10:] not in result.stderr
    assert count(session_factory, ApiKey) == 0


# --- members import --------------------------------------------------------------------


def test_members_import_writes_the_members(run: Run, tmp_path: Path, session_factory):
    file = tmp_path / "members.csv"
    file.write_text(
        HEADER
        + csv_line("one@example.org")
        + csv_line("Two@Example.org", country="tn")
        + csv_line("hook@example.org", webhook_url=PUBLIC_WEBHOOK)
    )

    result = run("members", "import", str(file))

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "created 3, updated 0, skipped 0" in result.stderr
    with session_factory() as session:
        members = {m.email: m for m in session.scalars(select(Member))}
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "member.import"))
    assert set(members) == {"one@example.org", "two@example.org", "hook@example.org"}
    assert members["two@example.org"].country == "TN"
    assert members["one@example.org"].languages == ["fr", "ar"]
    assert entry is not None
    assert (entry.actor, entry.details) == ("cli", {"created": 3, "updated": 0, "skipped": 0})
    # The one new webhook secret is printed on stdout, next to its member id.
    [line] = result.stdout.splitlines()
    member_id, secret = line.split("\t")
    assert uuid.UUID(member_id) == members["hook@example.org"].id
    assert secret.startswith("whsec_")

    again = run("members", "import", str(file))
    assert again.exit_code == 0, again.stderr
    assert "created 0, updated 3, skipped 0" in again.stderr
    assert again.stdout == ""
    assert count(session_factory, Member) == 3


def test_members_import_bad_file_lists_lines_and_writes_nothing(
    run: Run, tmp_path: Path, session_factory
):
    file = tmp_path / "bad.csv"
    file.write_text(
        HEADER
        + csv_line("ok@example.org")
        + csv_line("bad-country@example.org", country="XX")  # line 3
        + csv_line("ok2@example.org")
        + csv_line("private@example.org", webhook_url="https://10.0.0.1/x")  # line 5
        + "editors,Bad Tag,MA,t@example.org,,fr,not a date,written\n"  # line 6
    )

    result = run("members", "import", str(file))

    assert result.exit_code == 1
    assert "nothing was imported" in result.stderr
    assert "line 3, country" in result.stderr
    assert "line 5, webhook_url" in result.stderr
    assert "line 6, consent_given_at" in result.stderr
    assert "line 2," not in result.stderr
    assert result.stdout == ""
    assert count(session_factory, Member) == 0


def test_members_import_skip_writes_the_valid_rows(run: Run, tmp_path: Path, session_factory):
    file = tmp_path / "mixed.csv"
    file.write_text(HEADER + csv_line("ok@example.org") + csv_line("x@example.org", country="XX"))

    result = run("members", "import", str(file), "--on-error", "skip")

    assert result.exit_code == 0, result.stderr
    assert "skipped line 3, country" in result.stderr
    assert "created 1, updated 0, skipped 1" in result.stderr
    with session_factory() as session:
        assert list(session.scalars(select(Member.email))) == ["ok@example.org"]


def test_members_import_prints_user_text_literally(run: Run, tmp_path: Path, session_factory):
    # Headers are user input, not console markup: printing them must neither crash nor
    # swallow text.
    file = tmp_path / "markup.csv"
    file.write_text(
        "network,name,country,email,consent_given_at,consent_method,[/red],[bold]phone[/bold]\n"
        "editors,A,MA,a@example.org,2026-01-15T10:00:00+00:00,written,,\n"
    )

    result = run("members", "import", str(file))

    assert result.exit_code == 1, result.exception
    assert "[/red]: unknown column" in result.stderr
    assert "[bold]phone[/bold]: unknown column" in result.stderr
    assert count(session_factory, Member) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("é,ü\n".encode("latin-1"), "not UTF-8"),
        (b"", "empty"),
        (b'network,"name\n', "malformed CSV"),
        (b"network,name,phone\n", "phone: unknown column"),
    ],
    ids=["latin-1", "empty", "malformed", "unknown-column"],
)
def test_members_import_unreadable_file(
    run: Run, tmp_path: Path, session_factory, content: bytes, message: str
):
    file = tmp_path / "broken.csv"
    file.write_bytes(content)

    result = run("members", "import", str(file))

    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert message in result.stderr
    assert count(session_factory, Member) == 0


def test_members_import_bad_options(run: Run, tmp_path: Path, session_factory):
    file = tmp_path / "members.csv"
    file.write_text(HEADER + csv_line("ok@example.org"))

    assert run("members", "import", str(file), "--on-error", "ignore").exit_code == 2
    assert run("members", "import", str(tmp_path / "missing.csv")).exit_code == 2
    assert run("members", "import", str(tmp_path)).exit_code == 2
    assert count(session_factory, Member) == 0


# --- db --------------------------------------------------------------------------------


def test_db_current_prints_the_head_revision(run: Run, settings: Settings):
    heads = ScriptDirectory.from_config(migrate.alembic_config(settings.database_url)).get_heads()

    result = run("db", "current")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == ", ".join(sorted(heads))
    assert heads


def test_run_points_the_ack_links_at_its_own_port_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rrmm run --port 8010`: the links in the emails reach that API, not port 8000;
    an explicit `RRMM_PUBLIC_URL` (a proxy in front) still wins."""
    monkeypatch.delenv("RRMM_PUBLIC_URL", raising=False)
    settings = Settings(mode="embedded", var_dir=tmp_path)
    env = run_environment(settings, host="127.0.0.1", port=8010, smtp_port=1025)
    assert env["RRMM_PUBLIC_URL"] == "http://127.0.0.1:8010"
    shown = banner(settings, env, host="127.0.0.1", port=8010)
    assert "http://127.0.0.1:8010/docs" in shown
    assert "http://127.0.0.1:8010/console" in shown
    monkeypatch.setenv("RRMM_PUBLIC_URL", "https://alerts.example.org")
    told = Settings(mode="embedded", var_dir=tmp_path)
    env = run_environment(told, host="127.0.0.1", port=8010, smtp_port=1025)
    assert env["RRMM_PUBLIC_URL"] == "https://alerts.example.org"


# --- people ----------------------------------------------------------------------------


def test_people_create_list_reset_disable(run: Run, settings: Settings, session_factory) -> None:
    created = run(
        "people", "create", "--email", "Omar@Example.org", "--name", "Omar", "--role", "admin"
    )
    assert created.exit_code == 0, (created.stdout, created.stderr)
    [link] = created.stdout.splitlines()
    assert link.startswith(f"{settings.public_url.rstrip('/')}/console/setup/")
    token = link.rsplit("/", 1)[1]
    with session_factory() as session:
        [person] = session.scalars(select(Person)).all()
        assert (person.email, person.role, person.status) == (
            "omar@example.org",
            "admin",
            "invited",
        )
        assert person.setup_token_hash == people.digest(token)  # the link itself is not stored

    again = run(
        "people", "create", "--email", "omar@example.org", "--name", "O", "--role", "viewer"
    )
    assert again.exit_code == 1
    assert "already exists" in again.stderr

    listed = run("people", "list")
    assert listed.stdout.split("\t")[:4] == ["omar@example.org", "Omar", "admin", "invited"]

    reset = run("people", "reset", "omar@example.org")
    assert reset.exit_code == 0, reset.stderr
    assert reset.stdout.strip() != link  # a new link; the old one no longer works
    with session_factory() as session:
        assert people.person_for_setup(session, token) is None

    assert run("people", "disable", "omar@example.org").exit_code == 0
    assert run("people", "disable", "nobody@example.org").exit_code == 1
    with session_factory() as session:
        assert session.scalars(select(Person)).one().status == "disabled"
