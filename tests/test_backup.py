"""Backup and restore, proven with a fan-out in flight.

The embedded database is backed up with `rrmm backup` (SQLite's online backup API) while
a real worker sends; PostgreSQL with `pg_dump -Fc`, as docs/production.md says. The backup
is restored into a fresh database (`rrmm restore` / `pg_restore`), a worker is started on
it, and: every member, roster, incident, answer and ledger row is there, the fan-out
finishes, and what the backup knew as sent is not sent again (what was sent after the
backup is sent again, with the same `webhook-id` / `Message-ID`: the ledger's own rule for
a row it does not know went out).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from app.broker import BEAT_QUEUE, SEND_QUEUE
from app.cli.main import cli
from app.config import Settings, get_settings
from app.db import create_db_engine
from app.deliveries.tokens import signer_from_settings
from app.main import create_app
from app.models import Base, Delivery, Role
from app.netutil import wait_until
from tests.deliveries.test_process_faults import broker_client
from tests.support.database import scratch_database
from tests.support.factories import declare_body, wait_final
from tests.support.sinks import SmtpSink, WebhookReceiver
from tests.support.worker import WorkerProcess, worker_environment

MEMBERS = 400
ROSTER_SIZE = 25
ANSWERED = 6
BATCH_SIZE = 50
WEBHOOK_ID = re.compile(r"^rrmm_dlv_(\d+)$")
MESSAGE_ID = re.compile(r"^<rrmm\.delivery\.(\d+)@")
# Tables whose rows a fan-out does not change: restored, they must be equal row for row.
STILL_TABLES = (
    "members",
    "rosters",
    "roster_members",
    "api_keys",
    "briefings",
    "incident_targets",
    "acks",
    "current_acks",
    "answer_counters",
)


def cli_env(database_url: str, settings: Settings, var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRMM_")}
    env.update(
        {
            "RRMM_MODE": "production",
            "RRMM_DATABASE_URL": database_url,
            "RRMM_BROKER_URL": settings.broker_url,
            "RRMM_SECRET_KEY": settings.secret,
            "RRMM_VAR_DIR": str(var_dir),
        }
    )
    return env


def rrmm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a process of its own (as an operator runs it next to the service)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def libpq(url: str) -> str:
    """The URL pg_dump and pg_restore take (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def rows_of(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    columns = Base.metadata.tables[table]
    with engine.connect() as connection:
        return sorted((tuple(row) for row in connection.execute(select(columns))), key=repr)


def import_members(
    client: TestClient, headers: dict[str, str], receiver: WebhookReceiver
) -> list[str]:
    """MEMBERS members with an email and a webhook at the receiver; their ids."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "network",
            "name",
            "country",
            "languages",
            "email",
            "webhook_url",
            "consent_given_at",
            "consent_method",
        ]
    )
    for n in range(MEMBERS):
        writer.writerow(
            [
                "editors",
                f"Member {n}",
                "MA",
                "en;fr",
                f"backup{n}@example.org",
                receiver.url(f"/backup/{n}"),
                "2026-01-15T10:00:00+00:00",
                "written",
            ]
        )
    response = client.post(
        "/v1/members/import",
        content=buffer.getvalue().encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == MEMBERS, body
    for entry in body["webhook_secrets"]:
        receiver.set_secret(f"/backup/{entry['row'] - 2}", entry["webhook_secret"])
    return [entry["member_id"] for entry in body["webhook_secrets"]]


def sent_ids(receiver: WebhookReceiver, smtp: SmtpSink, since: tuple[int, int]) -> Counter[int]:
    """Ledger row ids of the messages received since `since` (hits, mails), with counts."""
    with receiver.lock:
        hits = list(receiver.hits)[since[0] :]
    with smtp.lock:
        mails = list(smtp.received)[since[1] :]
    assert all(hit.verified for hit in hits)
    ids: Counter[int] = Counter()
    for hit in hits:
        match = WEBHOOK_ID.match(hit.webhook_id)
        assert match, hit.webhook_id
        ids[int(match.group(1))] += 1
    for mail in mails:
        match = MESSAGE_ID.match(str(mail.message["Message-ID"]))
        assert match, mail.message["Message-ID"]
        ids[int(match.group(1))] += 1
    return ids


def received(receiver: WebhookReceiver, smtp: SmtpSink) -> tuple[int, int]:
    with receiver.lock, smtp.lock:
        return len(receiver.hits), len(smtp.received)


def purge(broker_url: str) -> None:
    """Nothing the first site queued may reach the restored site's worker."""
    with broker_client(broker_url) as client:
        client.delete(SEND_QUEUE, BEAT_QUEUE)


@pytest.fixture
def restored_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the same kind as the test database."""
    server = os.environ.get("RRMM_TEST_DATABASE_URL")
    if server:
        with scratch_database(server, "rrmm_restored") as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'restored' / 'rrmm.db'}"


@pytest.mark.slow
def test_a_backup_taken_during_a_fanout_restores_everything_and_resends_nothing_sent(
    settings: Settings,
    engine: Engine,
    auth: Callable[[Role], dict[str, str]],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
    restored_url: str,
    tmp_path: Path,
) -> None:
    postgres = settings.database_url.startswith("postgresql")
    if postgres and not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        pytest.skip("pg_dump / pg_restore are not installed")
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    purge(settings.broker_url)
    app_settings = settings.model_copy(update={"webhook_allow_private": True})
    # Slow receivers and few webhooks in flight: the webhooks take about ten seconds, so
    # the backup (a process of its own) is taken in the middle of them.
    receiver.delay = 0.1
    extra = {"RRMM_DELIVERY_BATCH_SIZE": str(BATCH_SIZE), "RRMM_WEBHOOK_CONCURRENCY": "2"}
    first = WorkerProcess(
        worker_environment(settings, smtp_port=smtp.port, var_dir=tmp_path / "w1", extra=extra)
    )
    second: WorkerProcess | None = None
    backup_path = tmp_path / "backups" / ("rrmm.dump" if postgres else "rrmm.db")
    try:
        with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
            member_ids = import_members(client, operator, receiver)
            roster = client.post(
                "/v1/rosters", json={"name": "Editors — Maghreb"}, headers=operator
            )
            assert roster.status_code == 201, roster.text
            added = client.post(
                f"/v1/rosters/{roster.json()['id']}/members",
                json={"member_ids": member_ids[:ROSTER_SIZE]},
                headers=operator,
            )
            assert added.status_code == 200, added.text
            first.start()
            declared = client.post("/v1/incidents", json=declare_body(), headers=operator)
            assert declared.status_code == 202, declared.text
            incident_id = declared.json()["id"]

            with engine.connect() as connection:
                email_rows = connection.scalars(
                    select(Delivery.id)
                    .where(
                        Delivery.incident_id == uuid.UUID(incident_id), Delivery.channel == "email"
                    )
                    .order_by(Delivery.id)
                    .limit(ANSWERED)
                ).all()
            signer = signer_from_settings(settings)
            for row in email_rows:
                token = signer.sign(row, datetime.now(UTC) + timedelta(days=30))
                answer = client.post("/v1/acks", json={"token": token, "response": "will_engage"})
                assert answer.status_code == 200, answer.text

            total = 2 * MEMBERS

            def webhooks_partly_sent() -> bool:
                response = client.get(f"/v1/incidents/{incident_id}/status", headers=viewer)
                webhooks = response.json()["deliveries"]["by_channel"].get("webhook", {})
                assert webhooks.get("sent", 0) < MEMBERS, f"finished before the backup: {webhooks}"
                return bool(webhooks.get("sent", 0) >= MEMBERS // 10)

            wait_until(webhooks_partly_sent, 90, "a tenth of the webhooks sent", interval=0.05)
            if postgres:
                backup_path.parent.mkdir(parents=True)
                dumped = subprocess.run(
                    [
                        "pg_dump",
                        "-Fc",
                        "--no-owner",
                        "-f",
                        str(backup_path),
                        libpq(settings.database_url),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert dumped.returncode == 0, dumped.stderr
            else:
                made = rrmm(
                    cli_env(settings.database_url, settings, tmp_path / "cli"),
                    "backup",
                    str(backup_path),
                )
                assert made.returncode == 0, made.stderr
                assert f"deliveries {total}" in made.stdout, made.stdout

            wait_final(client, viewer, incident_id, timeout=180)
        first.stop()

        # ----------------------------------------------------------- the restore
        purge(settings.broker_url)
        if postgres:
            loaded = subprocess.run(
                [
                    "pg_restore",
                    "--no-owner",
                    "--exit-on-error",
                    "--dbname",
                    libpq(restored_url),
                    str(backup_path),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert loaded.returncode == 0, loaded.stderr
        else:
            env = cli_env(restored_url, settings, tmp_path / "cli")
            loaded = rrmm(env, "restore", str(backup_path))
            assert loaded.returncode == 0, loaded.stderr
            assert f"members {MEMBERS}" in loaded.stdout, loaded.stdout
            upgraded = rrmm(env, "db", "upgrade")
            assert upgraded.returncode == 0, upgraded.stderr

        restored = create_db_engine(restored_url)
        try:
            for table in STILL_TABLES:
                original = rows_of(engine, table)
                assert original, f"{table}: the scenario left it empty"
                assert rows_of(restored, table) == original, f"{table} differs after restore"
            with restored.connect() as connection:
                ledger = {
                    row.id: (row.member_id, row.channel, row.status)
                    for row in connection.execute(
                        select(Delivery.id, Delivery.member_id, Delivery.channel, Delivery.status)
                    )
                }
            with engine.connect() as connection:
                finished = dict(connection.execute(select(Delivery.id, Delivery.status)).all())
            assert set(ledger) == set(finished), "ledger rows lost or added by the restore"
            known_sent = {i for i, (_m, _c, status) in ledger.items() if status == "sent"}
            assert known_sent, "the backup saw nothing sent: not taken during the fan-out"
            assert len(known_sent) < total, "the backup saw everything sent"
            assert all(finished[i] == "sent" for i in known_sent)

            # ------------------------------------------------- the restored site runs
            receiver.delay = 0.0
            since = received(receiver, smtp)
            restored_settings = settings.model_copy(update={"database_url": restored_url})
            second = WorkerProcess(
                worker_environment(
                    restored_settings, smtp_port=smtp.port, var_dir=tmp_path / "w2", extra=extra
                )
            ).start()
            restored_app = create_app(
                restored_settings.model_copy(update={"webhook_allow_private": True})
            )
            with TestClient(restored_app, raise_server_exceptions=False) as client:
                # The API keys came back with the rest: the same viewer key reads it.
                state = wait_final(client, viewer, incident_id, timeout=180)
                assert state["deliveries"]["by_status"] == {"sent": total}, state
                assert state["answers"]["answered"] == ANSWERED
            again = sent_ids(receiver, smtp, since)
            resent_known = set(again) & known_sent
            assert not resent_known, f"{len(resent_known)} rows the backup knew as sent went again"
            unknown = set(ledger) - known_sent
            assert set(again) == unknown, (
                f"missing after restore: {len(unknown - set(again))}, "
                f"unexpected: {len(set(again) - unknown)}"
            )
            print(
                f"\nbackup saw {len(known_sent)}/{total} sent; the restored site sent "
                f"{sum(again.values())} messages for {len(unknown)} rows"
            )
        finally:
            restored.dispose()
    finally:
        first.stop()
        if second is not None:
            second.stop()


# ------------------------------------------------------------------ the commands themselves


def invoke(env: dict[str, str], *args: str) -> Result:
    """The CLI in this process (the fan-out test above runs it as a process of its own)."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env=env)
    finally:
        get_settings.cache_clear()


def sqlite_only(settings: Settings) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("rrmm backup/restore are for the embedded SQLite database")


def test_backup_of_postgresql_points_to_pg_dump(settings: Settings, tmp_path: Path) -> None:
    env = cli_env("postgresql+psycopg://rrmm@127.0.0.1:1/rrmm", settings, tmp_path)
    result = invoke(env, "backup", str(tmp_path / "x.db"))
    assert result.exit_code == 1
    assert "pg_dump" in result.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.usefixtures("engine")
def test_restore_refuses_a_database_in_use_and_keeps_the_one_it_replaces(
    settings: Settings, tmp_path: Path
) -> None:
    sqlite_only(settings)
    env = cli_env(settings.database_url, settings, tmp_path)
    backup_path = tmp_path / "rrmm-backup.db"
    made = invoke(env, "backup", str(backup_path))
    assert made.exit_code == 0, made.stderr
    again = invoke(env, "backup", str(backup_path))
    assert again.exit_code == 1
    assert "already exists" in again.stderr

    target = tmp_path / "site" / "rrmm.db"
    target_env = cli_env(f"sqlite:///{target}", settings, tmp_path)
    assert invoke(target_env, "restore", str(backup_path)).exit_code == 0
    # Another process (here: a bare sqlite3 client) holds the database open.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('select 1 from alembic_version').fetchall(); print('open', flush=True); "
            "time.sleep(60)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        refused = invoke(target_env, "restore", str(backup_path))
        assert refused.exit_code == 1
        assert f"in use by process {holder.pid}" in refused.stderr
        forced = invoke(target_env, "restore", "--force", str(backup_path))
        assert forced.exit_code == 0, forced.stderr
        assert "kept in" in forced.stderr
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    # Killed, the holder left SQLite's shared-memory file behind: a process this user
    # could not see in /proc looks the same, so the restore still refuses without --force.
    assert Path(f"{target}-shm").exists()
    refused = invoke(target_env, "restore", str(backup_path))
    assert refused.exit_code == 1
    assert "may be in use (rrmm.db-shm exists)" in refused.stderr
    assert invoke(target_env, "restore", "--force", str(backup_path)).exit_code == 0
    kept = list(target.parent.glob("rrmm.db.before-restore-*"))
    assert len(kept) >= 1
    with sqlite3.connect(kept[0]) as connection:
        assert connection.execute("select count(*) from alembic_version").fetchone() == (1,)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    refused = invoke(target_env, "restore", str(junk))
    assert refused.exit_code == 1
    assert "not a SQLite database" in refused.stderr
    missing = invoke(target_env, "restore", str(tmp_path / "nothing.db"))
    assert missing.exit_code == 1
    assert "no such file" in missing.stderr
