"""PostgreSQL restarted in the middle of a fan-out: a scratch cluster of our own (initdb
into a temporary directory as the `postgres` user, pg_ctl on a free port), a real worker
and the API on it, `pg_ctl restart -m fast` halfway. Outcome writes and claims are retried
over the restart, the sweeper picks up whatever a failed task left: every member is still
reached, every row ends sent, and duplicates stay within what was in flight.

Runs where PostgreSQL's server binaries are installed and the suite runs as root (CI);
skipped elsewhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import migrate
from app.auth.service import create_key
from app.db import create_db_engine, create_session_factory, session_scope
from app.main import create_app
from app.models import Role
from app.netutil import free_port
from app.principal import Principal
from tests.deliveries.test_process_faults import (
    assert_everyone_reached,
    assert_one_sent_row_per_member_and_channel,
    final_state,
    import_members,
    wait_partly_sent,
)
from tests.support.factories import declare_body
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

WORKER_PROCESSES = 2
BATCH_SIZE = 100


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class ScratchCluster:
    """A PostgreSQL cluster of the test's own, run as the `postgres` user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="rrmm-pg-"))
        self.data = self.directory / "data"
        shutil.chown(self.directory, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "server.log"),
            "-w",
            action,
            *extra,
        )

    def start(self) -> ScratchCluster:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[ScratchCluster]:
    bin_dir = _pg_bin()
    if bin_dir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's server binaries and root (to run them as postgres)")
    scratch = ScratchCluster(bin_dir).start()
    try:
        yield scratch
    finally:
        scratch.stop()


@pytest.mark.usefixtures("purge_broker")
def test_postgresql_restart_mid_fanout_loses_nothing(cluster, settings, worker_env, smtp, receiver):
    migrate.upgrade(cluster.url)
    engine = create_db_engine(cluster.url)
    factory = create_session_factory(engine)
    with session_scope(factory) as session:
        _key, operator_key = create_key(
            session, name="operator", role=Role.OPERATOR, actor=Principal.cli()
        )
        _key, viewer_key = create_key(
            session, name="viewer", role=Role.VIEWER, actor=Principal.cli()
        )
    operator = {"Authorization": f"Bearer {operator_key}"}
    viewer = {"Authorization": f"Bearer {viewer_key}"}
    api_settings = settings.model_copy(
        update={"database_url": cluster.url, "webhook_allow_private": True}
    )
    env = {
        **worker_env,
        "RRMM_DATABASE_URL": cluster.url,
        "RRMM_DELIVERY_BATCH_SIZE": str(BATCH_SIZE),
    }
    receiver.delay = 0.02  # a fan-out that lasts a few seconds, so the restart hits it
    worker = WorkerProcess(env, concurrency=WORKER_PROCESSES).start()
    client = TestClient(create_app(api_settings), raise_server_exceptions=False).__enter__()
    try:
        members = import_members(client, operator, receiver, 600)
        total = 2 * len(members.emails)
        response = client.post("/v1/incidents", json=declare_body(), headers=operator)
        assert response.status_code == 202, response.text
        incident_id = response.json()["id"]

        at_restart = wait_partly_sent(client, viewer, incident_id, total, at_least=total // 5)
        cluster.restart()
        print(f"\nstatus when PostgreSQL restarted: {at_restart}")

        state = final_state(client, viewer, incident_id, [worker])
        assert state["deliveries"]["by_channel"] == {
            "email": {"sent": len(members.emails)},
            "webhook": {"sent": len(members.emails)},
        }
        with factory() as db:
            row_ids = assert_one_sent_row_per_member_and_channel(db, incident_id, members)
        reception = assert_everyone_reached(smtp, receiver, members, row_ids)
        print(f"duplicates after the restart: {reception}")
        duplicates = reception.webhook_duplicates + reception.email_duplicates
        # At most the batches in flight at the restart, one per worker process.
        assert duplicates <= WORKER_PROCESSES * BATCH_SIZE
    finally:
        worker.stop()
        client.__exit__(None, None, None)
        engine.dispose()
