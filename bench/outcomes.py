"""What claiming and writing outcomes cost per row: the ledger's statements alone, client
and server.

Rows are made `pending` (one incident, one version, no members: neither step reads them),
claimed `--claim-rows` at a time as batches of that size are (`ledger.claim`), then the
recorder writes their outcomes flush by flush as a batch would; the CPU of this process
and of the database's backends (PostgreSQL, from `/proc`) over each phase is divided by
the rows. A fresh database is created and dropped (PostgreSQL) or a temp file used.

    .venv/bin/python -m bench.outcomes --rows 20000 --claim-rows 1000
    .venv/bin/python -m bench.outcomes --rows 20000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from app import migrate
from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope
from app.deliveries import ledger
from app.deliveries.recorder import OutcomeRecorder, SentJob
from app.deliveries.transport import SendResult
from app.models import Briefing, Delivery, Incident
from app.models.base import utcnow
from bench.fanout import DatabaseCpu


def fill(session_factory: object, rows: int) -> tuple[list[SentJob], int]:
    """An incident and version with `rows` pending rows."""
    now = utcnow()
    with session_scope(session_factory) as session:  # type: ignore[arg-type]
        incident = Incident(
            reference=f"BENCH-{uuid.uuid4().hex[:8]}",
            title="bench",
            severity="high",
            urgency="immediate",
            mode="alert",
            countries=[],
            themes=[],
            audience={},
            channels=["email", "webhook"],
            responses=[],
            status="active",
        )
        session.add(incident)
        session.flush()
        briefing = Briefing(
            incident_id=incident.id, version=1, kind="initial", languages=["en"], content={}
        )
        session.add(briefing)
        session.flush()
        values = [
            {
                "incident_id": incident.id,
                "briefing_id": briefing.id,
                "member_id": None,
                "channel": ("email", "webhook")[n % 2],
                "status": "sending",
                "language": "en",
                "attempts": 1,
                "lease_until": now + timedelta(hours=1),
                "created_at": now,
                "updated_at": now,
            }
            for n in range(rows)
        ]
        for start in range(0, rows, 5000):
            session.execute(insert(Delivery), values[start : start + 5000])
        ids = [
            int(i)
            for (i,) in session.execute(
                text("SELECT id FROM deliveries WHERE briefing_id = :b ORDER BY id"),
                {"b": briefing.id},
            )
        ]
        jobs = [SentJob(i, 1, briefing.id, None, now) for i in ids]
        return jobs, briefing.id


class Phase:
    """CPU of this process and of the database's backends from now to `stop`."""

    def __init__(self, database: DatabaseCpu | None) -> None:
        self.database = database
        if database is not None:
            database.start()
        self.client, self.wall = time.process_time(), time.monotonic()

    def stop(self, rows: int) -> dict[str, float | None]:
        client = time.process_time() - self.client
        wall = time.monotonic() - self.wall
        server = self.database.used() if self.database is not None else None
        return {
            "client": round(client / rows * 1e6, 1),
            "server": None if server is None else round(server / rows * 1e6, 1),
            "wall": round(wall / rows * 1e6, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--flush-rows", type=int, default=50)
    parser.add_argument("--claim-rows", type=int, default=250, help="rows per claim (a batch)")
    parser.add_argument("--failures", type=float, default=0.02, help="share that fails (retry)")
    args = parser.parse_args()
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        admin = None
        if args.database_url is None:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        else:
            base = make_url(args.database_url)
            name = f"bench_outcomes_{os.getpid()}"
            admin = create_engine(base, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            url = base.set(database=name).render_as_string(hide_password=False)
        try:
            migrate.upgrade(url)
            engine = create_db_engine(url)
            factory = create_session_factory(engine)
            settings = Settings(
                mode="production", database_url=url, secret_key=secrets.token_hex(32)
            )
            pending, _ = fill(factory, args.rows)
            database = DatabaseCpu(url) if admin is not None else None
            claim = Phase(database)
            for start in range(0, len(pending), args.claim_rows):
                with session_scope(factory) as session:
                    chunk = [job.delivery_id for job in pending[start : start + args.claim_rows]]
                    ledger.claim(session, chunk, lease=timedelta(hours=1), max_attempts=8)
            claimed = claim.stop(len(pending))
            jobs = [SentJob(j.delivery_id, 1, j.briefing_id, None, j.created_at) for j in pending]
            recorder = OutcomeRecorder(factory, settings, jobs)
            results = [
                SendResult(job.delivery_id, ok=True)
                if random.random() >= args.failures
                else SendResult(job.delivery_id, ok=False, retryable=True, error="503")
                for job in jobs
            ]
            # A warm-up flush: the connection and the statement caches exist before timing.
            recorder._write(results[:10], [], True)
            record = Phase(database)
            flushes = 0
            for start in range(10, len(results), args.flush_rows):
                # A fence check every fifth flush, as at the default 0.1 s / 0.5 s.
                recorder._write(results[start : start + args.flush_rows], [], flushes % 5 == 0)
                flushes += 1
            recorded = record.stop(len(results) - 10)
            if database is not None:
                database.close()
            engine.dispose()
            print(
                json.dumps(
                    {
                        "backend": make_url(url).get_backend_name(),
                        "rows": len(pending),
                        "claim_rows": args.claim_rows,
                        "flush_rows": args.flush_rows,
                        "flushes": flushes,
                        "tally": recorder.tally.__dict__,
                        "claim_us_per_row": claimed,
                        "outcomes_us_per_row": recorded,
                    }
                )
            )
        finally:
            if admin is not None:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
