"""`rrmm`: the admin's command line (keys, migrations, imports, the local run)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy.orm import Session

from app import migrate
from app.auth import service as auth_service
from app.cli.demo import demo as demo_command
from app.cli.watch import watch as watch_command
from app.config import Settings, get_settings
from app.db import create_session_factory, engine_from_settings, session_scope
from app.errors import AppError
from app.models import ApiKey, Role
from app.principal import Principal

cli = typer.Typer(help="RRMM: the Rapid Response Media Mechanism.", no_args_is_help=True)
db_cli = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_cli = typer.Typer(
    help="API keys (stored hashed; a new key is shown once).", no_args_is_help=True
)
members_cli = typer.Typer(help="Members of the networks.", no_args_is_help=True)
secrets_cli = typer.Typer(help="Stored secrets and RRMM_SECRET_KEY rotation.", no_args_is_help=True)
people_cli = typer.Typer(
    help="People who sign in to the console (password + authenticator app).", no_args_is_help=True
)
cli.add_typer(db_cli, name="db")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(members_cli, name="members")
cli.add_typer(secrets_cli, name="secrets")
cli.add_typer(people_cli, name="people")

err = Console(stderr=True)


def _fail(message: str) -> None:
    # Messages quote user input (CSV headers, reasons with regex patterns): never markup.
    err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def _note(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        # Not str(exc): it repeats the input, which holds (part of) RRMM_SECRET_KEY.
        _fail("configuration error:")
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            _note(f"  {where + ': ' if where else ''}{error['msg']}")
        raise typer.Exit(2) from exc
    except ValueError as exc:
        _fail(f"configuration error: {exc}")
        raise typer.Exit(2) from exc


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """One unit of work on an engine of its own, disposed after (no pooled connection leaks)."""
    engine = engine_from_settings(settings)
    try:
        with session_scope(create_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@cli.command()
def run(
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option(help="Port of the local SMTP catcher.")] = 1025,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Run the whole service on the embedded default: bundled redis-server, SQLite, the API,
    a worker, a sweeper with beat and a local SMTP catcher (mail lands in var/mail). Ctrl-C
    stops all."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.cli.supervisor import run as run_all

    settings = Settings(mode="embedded")
    raise typer.Exit(
        run_all(settings, host=host, port=port, smtp_port=smtp_port, concurrency=concurrency)
    )


cli.command("demo")(demo_command)
cli.command("watch")(watch_command)


@cli.command()
def api(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
) -> None:
    """Serve the HTTP API against the configured database and broker."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    import uvicorn

    from app.serving import uvicorn_options

    settings = _settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(settings),
    )


@cli.command()
def worker(
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler (one per site).")] = False,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    queues: Annotated[
        str,
        typer.Option(
            help="Queues to consume, comma-separated. With a `rrmm sweeper` running, give "
            "`rrmm` alone: the sends' queue."
        ),
    ] = "rrmm,rrmm.beat",  # SEND_QUEUE,BEAT_QUEUE (Celery is not imported before it runs)
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker (and, with --beat, the periodic scheduler)."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from workers.celery_app import celery_app

    settings = _settings()
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
    ]
    if beat:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.var_dir / 'celerybeat-schedule'}"]
    celery_app.worker_main(argv)


@cli.command()
def sweeper(
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler (one per site).")] = False,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run the consumer of beat's queue alone: sweeps, heartbeats and operators' notices,
    one at a time, on schedule however busy the send workers are (their pool processes
    can all be in long batches during a large fan-out). One or more per site."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.broker import BEAT_QUEUE
    from workers.celery_app import celery_app

    settings = _settings()
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        "--concurrency=1",
        f"--queues={BEAT_QUEUE}",
        # Its own node name: a send worker on the same host is `celery@host`.
        "--hostname=sweeper@%h",
    ]
    if beat:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.var_dir / 'celerybeat-schedule'}"]
    celery_app.worker_main(argv)


@cli.command()
def beat(loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO") -> None:
    """Run the beat scheduler alone (exactly one per deployment)."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from workers.celery_app import celery_app

    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(
        ["beat", f"--loglevel={loglevel}", f"--schedule={settings.var_dir / 'celerybeat-schedule'}"]
    )


@cli.command("smtp-catcher", hidden=True)
def smtp_catcher(
    port: Annotated[int, typer.Option()] = 1025,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    directory: Annotated[Path, typer.Option("--dir")] = Path("var/mail"),
) -> None:
    """A local SMTP server that stores what it receives as .eml files."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.cli.smtp_catcher import serve

    serve(host, port, directory)


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    migrate.upgrade(_settings().database_url, revision)
    _note(f"database at {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="e.g. -1 or base")]) -> None:
    """Revert migrations down to REVISION."""
    migrate.downgrade(_settings().database_url, revision)
    _note(f"database at {revision}")


@db_cli.command("current")
def db_current() -> None:
    """Print the revision the database is at."""
    heads = migrate.current_heads(_settings().database_url)
    typer.echo(", ".join(sorted(heads)) or "(empty)")


@cli.command("backup")
def backup_command(
    path: Annotated[Path, typer.Argument(help="The backup file to write (must not exist).")],
) -> None:
    """Copy the embedded SQLite database to PATH, consistently, while the service runs
    (SQLite's online backup API). PostgreSQL: use pg_dump -Fc (docs/production.md)."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.backup import BackupError, backup

    try:
        snapshot = backup(_settings().database_url, path)
    except BackupError as exc:
        _fail(f"backup failed: {exc.detail}")
        raise typer.Exit(1) from exc
    rows = ", ".join(f"{table} {count}" for table, count in snapshot.rows.items())
    typer.echo(
        f"backed up to {snapshot.path} ({snapshot.size_bytes} bytes, schema {snapshot.revision}): "
        f"{rows}"
    )


@cli.command("restore")
def restore_command(
    path: Annotated[Path, typer.Argument(help="A file written by `rrmm backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Restore even while other processes use the database.")
    ] = False,
) -> None:
    """Replace the embedded SQLite database with the backup PATH. Refused while the API, a
    worker or beat has the database open, unless --force; the replaced database is kept
    beside it. Then run `rrmm db upgrade` and start the service."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.backup import BackupError, restore

    try:
        restored = restore(path, _settings().database_url, force=force)
    except BackupError as exc:
        _fail(f"restore failed: {exc.detail}")
        raise typer.Exit(1) from exc
    if restored.previous is not None:
        _note(f"the database it replaced is kept in {restored.previous}")
    rows = ", ".join(f"{table} {count}" for table, count in restored.snapshot.rows.items())
    typer.echo(
        f"restored {restored.destination} from {path} (schema {restored.snapshot.revision}): {rows}"
    )


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[Role, typer.Option(help="admin, operator or viewer.")],
) -> None:
    """Create an API key and print it alone on stdout. It is not shown again."""
    settings = _settings()
    if not name.strip() or len(name) > 100:
        _fail("--name must be 1 to 100 characters")
        raise typer.Exit(2)
    with _session(settings) as session:
        key, plaintext = auth_service.create_key(
            session, name=name.strip(), role=role, actor=Principal.cli()
        )
        key_id = key.id
    typer.echo(plaintext)
    _note(f"created key {key_id} ({role.value}); store it now, it is not shown again")


@keys_cli.command("list")
def keys_list() -> None:
    """List keys (id, name, role, prefix, created, revoked). Never the keys themselves."""
    with _session(_settings()) as session:
        keys = auth_service.list_keys(session)
    rows = [_key_row(key) for key in keys]
    if not sys.stdout.isatty():
        # Piped or redirected: one tab-separated line per key, never cut to a terminal width
        # (a shortened id cannot be passed to `keys revoke`).
        for row in rows:
            typer.echo("\t".join(row))
        return
    table = Table()
    for column in ("id", "name", "role", "prefix", "created", "revoked"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(markup=False, highlight=False).print(table)


def _key_row(key: ApiKey) -> tuple[str, str, str, str, str, str]:
    return (
        str(key.id),
        key.name,
        key.role,
        key.key_prefix + "…",
        key.created_at.isoformat(timespec="seconds"),
        key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
    )


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[uuid.UUID, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key: every request made with it is refused from now on."""
    settings = _settings()
    try:
        with _session(settings) as session:
            auth_service.revoke_key(session, key_id=key_id, actor=Principal.cli())
    except AppError as exc:
        _fail(exc.detail)
        raise typer.Exit(1) from exc
    _note(f"revoked {key_id}")


def _setup_url(settings: Settings, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}/console/setup/{token}"


@people_cli.command("create")
def people_create(
    email: Annotated[str, typer.Option(help="Their email address (the sign-in name).")],
    name: Annotated[str, typer.Option(help="Their name, as the console shows it.")],
    role: Annotated[Role, typer.Option(help="admin, operator or viewer.")],
    language: Annotated[str, typer.Option(help="Console language: en, fr or ar.")] = "en",
) -> None:
    """Invite a person: prints a one-time set-up link (24 hours) where they choose a
    password and connect an authenticator app. Give it to them yourself."""
    # Argon2 and TOTP: kept out of `rrmm --help`.
    from app.people import service as people

    settings = _settings()
    try:
        with _session(settings) as session:
            link = people.create_person(
                session, email=email, name=name, role=role, language=language, actor=Principal.cli()
            )
            person_id, expires = link.person.id, link.expires_at
    except AppError as exc:
        _fail(exc.detail)
        raise typer.Exit(1) from exc
    typer.echo(_setup_url(settings, link.token))
    until = f"{expires:%Y-%m-%d %H:%M} UTC"
    _note(f"invited {person_id} ({role.value}); the link works once, until {until}")


@people_cli.command("list")
def people_list() -> None:
    """List people: email, name, role, state, second factor, last sign-in."""
    # Argon2 and TOTP: kept out of `rrmm --help`.
    from app.people import service as people

    with _session(_settings()) as session:
        rows = [
            (
                p.email,
                p.name,
                p.role,
                p.status,
                "totp" if p.totp_secret else "-",
                p.last_sign_in_at.isoformat(timespec="seconds") if p.last_sign_in_at else "",
            )
            for p in people.list_people(session)
        ]
    for row in rows:
        typer.echo("\t".join(row))


@people_cli.command("disable")
def people_disable(email: Annotated[str, typer.Argument(help="Their email address.")]) -> None:
    """Disable a person: no more sign-ins, and every open session ends now."""
    # Argon2 and TOTP: kept out of `rrmm --help`.
    from app.people import service as people

    try:
        with _session(_settings()) as session:
            people.disable_person(session, email, actor=Principal.cli())
    except AppError as exc:
        _fail(exc.detail)
        raise typer.Exit(1) from exc
    _note(f"disabled {email}")


@people_cli.command("reset")
def people_reset(email: Annotated[str, typer.Argument(help="Their email address.")]) -> None:
    """Forget a person's password, second factor and recovery codes, sign them out
    everywhere, and print a new set-up link."""
    # Argon2 and TOTP: kept out of `rrmm --help`.
    from app.people import service as people

    settings = _settings()
    try:
        with _session(settings) as session:
            link = people.reset_person(session, email, actor=Principal.cli())
    except AppError as exc:
        _fail(exc.detail)
        raise typer.Exit(1) from exc
    typer.echo(_setup_url(settings, link.token))
    _note(f"reset {email}: their sessions ended; give them the new link")


@members_cli.command("import")
def members_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    on_error: Annotated[
        str, typer.Option(help="abort: all or nothing; skip: import the valid rows.")
    ] = "abort",
) -> None:
    """Import members from a CSV file (upsert by email), with a progress bar."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.main import member_policy
    from app.members import csv_io

    if on_error not in ("abort", "skip"):
        _fail("--on-error must be abort or skip")
        raise typer.Exit(2)
    settings = _settings()
    raw = file.read_bytes()
    rows = max(raw.count(b"\n") - 1, 1)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err
    )
    try:
        with progress, _session(settings) as session:
            task = progress.add_task("validating, then writing", total=rows * 2)
            result = csv_io.import_members(
                session,
                raw,
                policy=member_policy(settings),
                actor=Principal.cli(),
                on_error=on_error,  # type: ignore[arg-type]
                progress=lambda n: progress.advance(task, n),
            )
            progress.update(task, completed=rows * 2)
    except AppError as exc:
        _fail(exc.detail)
        for problem in exc.errors or []:
            where = f"line {problem.row}, " if problem.row else ""
            _note(f"  {where}{problem.field}: {problem.reason}")
        raise typer.Exit(1) from exc
    for error in result.errors:
        _note(f"  skipped line {error.row}, {error.field}: {error.reason}")
    for secret in result.webhook_secrets:
        typer.echo(f"{secret.member_id}\t{secret.webhook_secret}")
    _note(
        f"created {result.created}, updated {result.updated}, skipped {result.skipped}"
        + (" (new webhook secrets printed on stdout)" if result.webhook_secrets else "")
    )


@secrets_cli.command("rotate")
def secrets_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Members per transaction.")
    ] = 500,
) -> None:
    """Re-encrypt every stored webhook secret under RRMM_SECRET_KEY (reading old ones with
    RRMM_SECRET_KEY_PREVIOUS), one batch per transaction. Safe to run again: secrets already
    under the current key are left alone. Once it reports nothing unreadable, unset
    RRMM_SECRET_KEY_PREVIOUS (after the old ack links have expired)."""
    # Imported when the command runs, so that `rrmm --help` stays fast.
    from app.members.secret_rotation import rotate_webhook_secrets
    from app.security import SecretBox

    settings = _settings()
    box = SecretBox.from_settings(settings)
    scanned = rotated = 0
    unreadable: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    progress = Progress(TextColumn("{task.description}"), MofNCompleteColumn(), console=err)
    engine = engine_from_settings(settings)
    factory = create_session_factory(engine)
    try:
        with progress:
            task = progress.add_task("webhook secrets checked", total=None)
            while True:
                # One transaction per batch: no lock is held for long, and what is done
                # stays done if the run is interrupted (the next run skips it).
                with session_scope(factory) as session:
                    batch = rotate_webhook_secrets(
                        session, box=box, after=after, limit=batch_size, actor=Principal.cli()
                    )
                scanned += batch.scanned
                rotated += batch.rotated
                unreadable += batch.unreadable
                progress.advance(task, batch.scanned)
                if batch.last_id is None:
                    break
                after = batch.last_id
    finally:
        engine.dispose()
    typer.echo(f"re-encrypted {rotated} of {scanned} webhook secrets")
    if unreadable:
        _fail(
            f"{len(unreadable)} webhook secrets cannot be decrypted with RRMM_SECRET_KEY or "
            "RRMM_SECRET_KEY_PREVIOUS; keep both set and check the keys. Members:"
        )
        for member_id in unreadable:
            _note(f"  {member_id}")
        raise typer.Exit(1)
    if settings.previous_secret is None:
        _note("every webhook secret is under RRMM_SECRET_KEY (RRMM_SECRET_KEY_PREVIOUS is not set)")
    else:
        _note(
            "every webhook secret is under RRMM_SECRET_KEY; RRMM_SECRET_KEY_PREVIOUS can be "
            "unset once the ack links signed with it have expired"
        )
