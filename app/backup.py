"""Backup and restore of the embedded SQLite database (`rrmm backup`, `rrmm restore`).

Both go through SQLite's online backup API (`sqlite3.Connection.backup`), never a file
copy: a copy of a database in WAL mode taken while the service writes can miss the pages
still in the WAL, or catch half a transaction. The backup reads one snapshot in a single
step (a WAL reader never blocks the writers), so it is consistent while the API and the
workers run. PostgreSQL has its own tools (`pg_dump -Fc`, `pg_restore`, or PITR):
docs/production.md, "Backup and restore".
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from app.errors import AppError

# What `rrmm backup` reports and the restore test compares: the rosters, the ledger and
# the answers. Names are fixed here, never taken from input (they go into SQL text).
COUNTED_TABLES = (
    "members",
    "rosters",
    "roster_members",
    "incidents",
    "briefings",
    "deliveries",
    "acks",
    "current_acks",
    "api_keys",
)


class BackupError(AppError):
    """A backup or restore that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Snapshot:
    """What a backup file holds: its schema revision and the rows of the main tables."""

    path: Path
    revision: str
    rows: dict[str, int]
    size_bytes: int


def sqlite_path(database_url: str) -> Path:
    """The file of a `sqlite:///…` URL; anything else is refused with the way to go."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            f"rrmm backup/restore handle the embedded SQLite database; this is "
            f"{url.get_backend_name()}: use pg_dump -Fc / pg_restore (docs/production.md)"
        )
    if not url.database or url.database == ":memory:":
        raise BackupError("the SQLite database is in memory: nothing to back up")
    return Path(url.database)


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    else:
        connection = sqlite3.connect(path, timeout=30)
    connection.execute("PRAGMA busy_timeout = 30000")
    return connection


def inspect(path: Path) -> Snapshot:
    """Check a backup file (integrity, an RRMM schema) and count its rows."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    try:
        connection = _connect(path, read_only=True)
        try:
            (integrity,) = connection.execute("PRAGMA integrity_check").fetchone()
            if integrity != "ok":
                raise BackupError(f"{path}: the file is damaged ({integrity})")
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'"
                )
            }
            if "alembic_version" not in tables:
                raise BackupError(f"{path}: not an RRMM database (no schema revision)")
            revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            rows: dict[str, int] = {}
            for table in COUNTED_TABLES:
                if table in tables:
                    query = f'SELECT count(*) FROM "{table}"'  # noqa: S608 (fixed names only)
                    rows[table] = int(connection.execute(query).fetchone()[0])
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a SQLite database ({exc})") from exc
    return Snapshot(path, revision[0] if revision else "", rows, path.stat().st_size)


def backup(database_url: str, destination: Path) -> Snapshot:
    """Write a consistent copy of the database to `destination` (a new file), while the
    service may be running. The copy is a single self-contained file (no WAL beside it),
    checked before it is given its name."""
    source = sqlite_path(database_url)
    if not source.is_file():
        raise BackupError(f"{source}: the database does not exist")
    if destination.exists():
        raise BackupError(f"{destination}: already exists (a backup never overwrites)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    partial.unlink(missing_ok=True)
    reader = _connect(source)
    try:
        writer = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, from one read snapshot. In steps,
            # every write by another connection would restart the copy from the start.
            reader.backup(writer, pages=-1)
            writer.execute("PRAGMA journal_mode = DELETE")
            writer.commit()
        finally:
            writer.close()
    finally:
        reader.close()
    try:
        snapshot = inspect(partial)
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.rename(destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Snapshot(destination, snapshot.revision, snapshot.rows, snapshot.size_bytes)


def holders(path: Path) -> list[int]:
    """Ids of the other processes that have the database (or its WAL) open, read from
    /proc (Linux): all of them as root, otherwise only this user's. Empty where /proc
    cannot say."""
    targets = {str(p.resolve()) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))}
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(found)


@dataclass(frozen=True)
class Restored:
    snapshot: Snapshot
    destination: Path
    previous: Path | None  # where the database it replaced was kept


def restore(source: Path, database_url: str, *, force: bool = False) -> Restored:
    """Replace the configured database with the backup `source`.

    Refused while another process has the database open (the API, a worker: they would
    go on with what they have in memory and in their pools) unless `force`. The database
    replaced is first copied beside it (`<name>.before-restore-<time>`), so a wrong
    restore can be undone. The copy goes through the backup API into the database file
    itself, so even a forced restore leaves no process writing to a deleted file.
    """
    snapshot = inspect(source)
    destination = sqlite_path(database_url)
    if destination.exists() and source.resolve() == destination.resolve():
        raise BackupError(f"{source} is the configured database itself")
    in_use = holders(destination) if destination.exists() else []
    if in_use and not force:
        listed = ", ".join(str(pid) for pid in in_use)
        raise BackupError(
            f"{destination} is in use by process {listed}: stop the API, workers and beat "
            "first (or pass --force to restore under them)"
        )
    # /proc shows only the processes this user may look at; SQLite removes the shared-memory
    # file when the last connection closes, so one left there means a user we cannot see
    # has it open (or one crashed).
    shm = Path(f"{destination}-shm")
    if not in_use and shm.exists() and not force:
        raise BackupError(
            f"{destination} may be in use ({shm.name} exists): stop the API, workers and "
            "beat first (or pass --force)"
        )
    previous: Path | None = None
    if destination.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")  # several restores a second
        previous = destination.with_name(f"{destination.name}.before-restore-{stamp}")
        backup(database_url, previous)
    destination.parent.mkdir(parents=True, exist_ok=True)
    reader = _connect(source, read_only=True)
    try:
        writer = _connect(destination)
        try:
            reader.backup(writer, pages=-1)
            # The service runs the database in WAL mode (app/db.py sets it per connection
            # too); the backup file is in rollback-journal mode.
            writer.execute("PRAGMA journal_mode = WAL")
            writer.commit()
        finally:
            writer.close()
    finally:
        reader.close()
    return Restored(snapshot, destination, previous)
