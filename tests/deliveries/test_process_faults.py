"""Process and broker faults during a fan-out, with real workers, Redis and database.

The database is the ledger and the broker only a doorbell: a worker SIGKILLed mid-fan-out,
a broker flushed halfway, or a broker down when the incident is declared must all end with
exactly one ledger row per member and channel, every one sent, and every member reached.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Delivery, Role
from app.netutil import wait_until
from tests.support.factories import declare_body, make_client, wait_final
from tests.support.sinks import SmtpSink, WebhookReceiver
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

CONCURRENCY = 2  # worker processes of each WorkerProcess
BATCH_SIZE = 100  # deliveries per task, set explicitly so the duplicate bound is concrete
FINAL_TIMEOUT = 180.0
MESSAGE_ID = re.compile(r"^<rrmm\.delivery\.(\d+)@")


# ---------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Imported:
    """Members created by one CSV import: their email and webhook path, by member id."""

    emails: dict[str, str]
    hook_paths: dict[str, str]


def import_members(
    client: TestClient, headers: dict[str, str], receiver: WebhookReceiver, count: int
) -> Imported:
    """Create `count` members (email + webhook to the receiver) with one CSV import, and
    register each webhook secret on the receiver so that every hit is verified."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = ["network", "name", "country", "languages", "email", "webhook_url"]
    writer.writerow([*columns, "consent_given_at", "consent_method"])
    by_line: dict[int, tuple[str, str]] = {}
    for n in range(count):
        address, path = f"fault{n}@example.org", f"/faults/{n}"
        writer.writerow(
            [
                "editors",
                f"Member {n}",
                "MA",
                "en;fr",
                address,
                receiver.url(path),
                "2026-01-15T10:00:00+00:00",
                "written",
            ]
        )
        by_line[n + 2] = (address, path)  # line 1 is the header
    response = client.post(
        "/v1/members/import",
        content=buffer.getvalue().encode(),
        headers={**headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == count, body
    assert len(body["webhook_secrets"]) == count
    emails: dict[str, str] = {}
    hook_paths: dict[str, str] = {}
    for entry in body["webhook_secrets"]:
        address, path = by_line[entry["row"]]
        receiver.set_secret(path, entry["webhook_secret"])
        emails[entry["member_id"]] = address
        hook_paths[entry["member_id"]] = path
    return Imported(emails, hook_paths)


def counts(client: TestClient, headers: dict[str, str], incident_id: str) -> dict[str, int]:
    response = client.get(f"/v1/incidents/{incident_id}/status", headers=headers)
    assert response.status_code == 200, response.text
    by_status: dict[str, int] = response.json()["deliveries"]["by_status"]
    return by_status


def wait_partly_sent(
    client: TestClient, headers: dict[str, str], incident_id: str, total: int, at_least: int
) -> dict[str, int]:
    """Poll until at least `at_least` deliveries are sent; fail if the whole fan-out is
    already over (the fault would then hit nothing)."""
    state: dict[str, int] = {}

    def partly() -> bool:
        nonlocal state
        state = counts(client, headers, incident_id)
        assert state.get("sent", 0) < total, f"the fan-out finished before the fault: {state}"
        return state.get("sent", 0) >= at_least

    wait_until(partly, 90, f"{at_least} deliveries sent (last status {state})", interval=0.05)
    return state


def broker_client(url: str) -> redis.Redis:
    """A client of the broker's own Redis database: `redis://…/<db>` or `redis+socket://`."""
    if url.startswith("redis+socket://"):
        path, _, query = url.removeprefix("redis+socket://").partition("?")
        db = 0
        for item in query.split("&"):
            key, _, value = item.partition("=")
            if key in ("db", "virtual_host") and value:
                db = int(value.strip("/"))
        return redis.Redis(unix_socket_path=path, db=db)
    return redis.Redis.from_url(url)


def final_state(
    client: TestClient, headers: dict[str, str], incident_id: str, workers: list[WorkerProcess]
) -> dict[str, Any]:
    try:
        return wait_final(client, headers, incident_id, timeout=FINAL_TIMEOUT)
    except AssertionError as exc:
        logs = "\n".join(w.log()[-6000:] for w in workers[-1:])
        raise AssertionError(f"{exc}\n--- worker log (tail) ---\n{logs}") from exc


def assert_one_sent_row_per_member_and_channel(
    db: Session, incident_id: str, members: Imported
) -> dict[tuple[str, str], int]:
    """Exactly one ledger row per (member, channel), all sent. Returns their ids."""
    rows = db.execute(
        select(Delivery.id, Delivery.member_id, Delivery.channel, Delivery.status).where(
            Delivery.incident_id == uuid.UUID(incident_id)
        )
    ).all()
    keys = Counter((str(r.member_id), r.channel) for r in rows)
    doubled = {k: n for k, n in keys.items() if n > 1}
    assert not doubled, f"{len(doubled)} (member, channel) with several rows, e.g. {doubled}"
    expected = {(m, c) for m in members.emails for c in ("email", "webhook")}
    assert set(keys) == expected, (
        f"missing rows: {len(expected - set(keys))}, unexpected: {len(set(keys) - expected)}"
    )
    statuses = Counter(r.status for r in rows)
    assert statuses == {"sent": len(expected)}, statuses
    return {(str(r.member_id), r.channel): r.id for r in rows}


@dataclass(frozen=True)
class Reception:
    webhook_duplicates: int
    email_duplicates: int


def assert_everyone_reached(
    smtp: SmtpSink,
    receiver: WebhookReceiver,
    members: Imported,
    row_ids: dict[tuple[str, str], int],
) -> Reception:
    """Every member got the webhook (verified) and the email (to them alone), each with
    the stable id of their ledger row; returns how many extra copies arrived."""
    with receiver.lock:
        hits = list(receiver.hits)
    unverified = [h for h in hits if not h.verified]
    assert not unverified, f"{len(unverified)} unverified webhook hits, e.g. {unverified[0]}"
    hits_by_path: dict[str, list[str]] = {}
    for hit in hits:
        hits_by_path.setdefault(hit.path, []).append(hit.webhook_id)
    for member_id, path in members.hook_paths.items():
        expected_id = f"rrmm_dlv_{row_ids[(member_id, 'webhook')]}"
        seen = hits_by_path.get(path)
        assert seen, f"member {member_id}: no webhook at {path}"
        assert set(seen) == {expected_id}, (member_id, seen, expected_id)
    assert set(hits_by_path) == set(members.hook_paths.values())

    with smtp.lock:
        mails = list(smtp.received)
    mails_by_address: dict[str, list[str]] = {}
    for mail in mails:
        assert len(mail.recipients) == 1, mail.recipients
        assert mail.message["To"] == mail.recipients[0]
        mails_by_address.setdefault(mail.recipients[0], []).append(str(mail.message["Message-ID"]))
    for member_id, address in members.emails.items():
        seen = mails_by_address.get(address)
        assert seen, f"member {member_id}: no email to {address}"
        ids = {MESSAGE_ID.match(value) for value in seen}
        assert None not in ids, seen
        assert {int(m.group(1)) for m in ids if m} == {row_ids[(member_id, "email")]}, seen
    assert set(mails_by_address) == set(members.emails.values())
    return Reception(
        webhook_duplicates=len(hits) - len(members.hook_paths),
        email_duplicates=len(mails) - len(members.emails),
    )


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def fault_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "RRMM_DELIVERY_BATCH_SIZE": str(BATCH_SIZE)}


@pytest.fixture
def spawn(fault_env: dict[str, str], purge_broker: None) -> Iterator[Callable[[], WorkerProcess]]:  # noqa: ARG001 (requested for its effect: an empty broker)
    """Start workers (same environment, same log file); all are stopped at the end."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(WorkerProcess(fault_env, concurrency=CONCURRENCY).start())
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def broker_down_client(settings: Settings, engine: Any) -> Iterator[TestClient]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """The API with its broker pointed at a port nobody listens on."""
    yield from make_client(
        settings.model_copy(
            update={"broker_url": "redis://127.0.0.1:1/0", "webhook_allow_private": True}
        )
    )


# ---------------------------------------------------------------------------- tests


def test_sigkill_mid_fanout_loses_nothing_and_duplicates_little(
    fanout_client, auth, spawn, smtp, receiver, db
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    members = import_members(fanout_client, operator, receiver, 2000)
    total = 2 * len(members.emails)
    first = spawn()
    response = fanout_client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert response.status_code == 202, response.text
    incident_id = response.json()["id"]

    at_kill = wait_partly_sent(fanout_client, viewer, incident_id, total, at_least=total // 10)
    first.kill()
    after_kill = counts(fanout_client, viewer, incident_id)
    print(f"\nstatus when killed: {at_kill}; right after: {after_kill}")
    second = spawn()

    state = final_state(fanout_client, viewer, incident_id, [first, second])
    assert state["deliveries"]["by_channel"] == {
        "email": {"sent": len(members.emails)},
        "webhook": {"sent": len(members.emails)},
    }
    row_ids = assert_one_sent_row_per_member_and_channel(db, incident_id, members)
    reception = assert_everyone_reached(smtp, receiver, members, row_ids)
    duplicates = reception.webhook_duplicates + reception.email_duplicates
    print(
        f"duplicates after SIGKILL: webhook {reception.webhook_duplicates}, "
        f"email {reception.email_duplicates} (bound {CONCURRENCY * BATCH_SIZE})"
    )
    # Only the batches being sent at the kill can go out twice: one per worker process.
    assert duplicates <= CONCURRENCY * BATCH_SIZE


def test_broker_flushed_halfway_the_sweeper_finishes(
    fanout_client, auth, spawn, smtp, receiver, db, settings
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    members = import_members(fanout_client, operator, receiver, 1000)
    total = 2 * len(members.emails)
    worker = spawn()
    response = fanout_client.post("/v1/incidents", json=declare_body(), headers=operator)
    assert response.status_code == 202, response.text
    incident_id = response.json()["id"]

    at_flush = wait_partly_sent(fanout_client, viewer, incident_id, total, at_least=total // 10)
    # Every key of the broker's database: queued messages, unacked ones, bindings.
    with broker_client(settings.broker_url) as client:
        client.flushdb()
    print(f"\nstatus when flushed: {at_flush}")

    state = final_state(fanout_client, viewer, incident_id, [worker])
    assert state["deliveries"]["by_channel"] == {
        "email": {"sent": len(members.emails)},
        "webhook": {"sent": len(members.emails)},
    }
    row_ids = assert_one_sent_row_per_member_and_channel(db, incident_id, members)
    reception = assert_everyone_reached(smtp, receiver, members, row_ids)
    print(f"duplicates after FLUSHDB: {reception}")


def test_broker_down_at_declaration_the_fanout_starts_later(
    broker_down_client, auth, spawn, smtp, receiver, db
):
    operator, viewer = auth(Role.OPERATOR), auth(Role.VIEWER)
    members = import_members(broker_down_client, operator, receiver, 200)
    started = time.monotonic()
    response = broker_down_client.post("/v1/incidents", json=declare_body(), headers=operator)
    elapsed = time.monotonic() - started
    print(f"\ndeclaration with the broker down answered in {elapsed:.1f}s")
    assert response.status_code == 202, response.text
    assert elapsed < 15
    incident_id = response.json()["id"]
    rows = db.execute(
        select(Delivery.status, Delivery.enqueued_at).where(
            Delivery.incident_id == uuid.UUID(incident_id)
        )
    ).all()
    assert len(rows) == 2 * len(members.emails)
    assert {(r.status, r.enqueued_at) for r in rows} == {("pending", None)}
    db.rollback()  # end the read transaction: the worker writes these rows next

    worker = spawn()
    state = final_state(broker_down_client, viewer, incident_id, [worker])
    assert state["deliveries"]["by_channel"] == {
        "email": {"sent": len(members.emails)},
        "webhook": {"sent": len(members.emails)},
    }
    row_ids = assert_one_sent_row_per_member_and_channel(db, incident_id, members)
    reception = assert_everyone_reached(smtp, receiver, members, row_ids)
    assert reception == Reception(webhook_duplicates=0, email_duplicates=0)
