"""Status benchmark: dashboards polling an incident's status while its fan-out runs, against
`/healthz` in the same run; then the status read for a roster of 100 and of 100,000 members.

    .venv/bin/python -m bench.status                        # 2000 members; 100 vs 100,000
    .venv/bin/python -m bench.status --think 1              # dashboards polling every second
    .venv/bin/python -m bench.status --only roster --members-large 20000

1. Under load. The service runs as in bench/fanout.py (API, worker, beat, sinks; the API is
   `rrmm api` with --api-workers server processes, default 1 as `rrmm run` serves it). N
   members are imported and an incident is declared to them; while its fan-out runs, 200
   pollers on one connection pool loop on `GET /v1/incidents/{id}/status` with the last ETag
   they saw (`If-None-Match`), like dashboards, then the same pollers on `GET /healthz`, in
   slices of a fixed length ordered status, healthz, healthz, status (ABBA: a load that drifts
   linearly weighs on both alike), repeated while the fan-out runs. Then one more ABBA round
   once the fan-out is over, when an unchanged status is a 304.
2. Roster size. The worker and beat are stopped; two incidents, of 100 and of 100,000
   members, are seeded in the same database through the service layer's own `declare` (in
   process, bulk SQL), their deliveries moved to sent/failed with the ledger's own
   `transition` and answers added in bulk with their counters, all recounted from the rows.
   Their status is then read over HTTP (sequentially, then 20 at a time, without
   `If-None-Match`) and in process (`status_document`: time and SQL statements per read).

Prints a report, then all figures as one JSON line (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
from sqlalchemy import Engine, Table, event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import counters
from app.acks.quotas import in_segment, quota_progress
from app.acks.service import delay_bucket
from app.db import create_db_engine, create_session_factory, session_scope
from app.deliveries import ledger
from app.incidents.schemas import IncidentCreate
from app.incidents.service import declare, get_incident
from app.incidents.status import incident_status, status_document
from app.models import (
    Ack,
    AnswerCounter,
    AnswerDelayCounter,
    CurrentAck,
    Delivery,
    Incident,
    IncidentTarget,
    Member,
    QuotaCounter,
)
from app.models.base import utcnow, uuid7
from app.principal import Principal
from app.vocabulary import DeliveryStatus
from bench.fanout import (
    LANGUAGES,
    Backend,
    BenchError,
    Children,
    Components,
    Service,
    add_service_arguments,
    check_service_arguments,
    declare_body,
    import_members,
    is_final,
    log,
    machine_cpu,
    run_bench,
    start_service,
)
from bench.listeners import fanout_over, listeners_part

ENDPOINTS = ("status", "healthz")
ABBA = ("status", "healthz", "healthz", "status")
# The roster part's members: another network than the load part's `editors`, one country
# per incident, so each incident's audience is exactly its own members.
ROSTER_NETWORK = "personalities"
SMALL_COUNTRY, LARGE_COUNTRY = "SN", "TN"
FAILED_ONE_IN = 40  # one delivery in 40 ends failed, the rest sent
MEMBERS = cast(Table, Member.__table__)
ACKS = cast(Table, Ack.__table__)
CURRENT_ACKS = cast(Table, CurrentAck.__table__)
_CHUNK = 5000


# ----------------------------------------------------------------------------- statistics


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


@dataclass
class Tally:
    """What a set of requests gave: latencies of the answered ones, codes of all."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, latency: float, code: str) -> None:
        self.codes[code] += 1
        if code in ("200", "304"):
            self.latencies.append(latency)

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.codes.update(other.codes)
        self.seconds += other.seconds

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        errors = {code: n for code, n in self.codes.items() if code not in ("200", "304")}
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else None,
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p90_ms": _ms(percentile(ordered, 0.90)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
            "mean_ms": _ms(sum(ordered) / len(ordered)) if ordered else None,
            "ok_200": self.codes.get("200", 0),
            "not_modified_304": self.codes.get("304", 0),
            "errors": sum(errors.values()),
            "error_kinds": errors,
        }


# ----------------------------------------------------------------------------- HTTP clients


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop if installed (it comes with uvicorn[standard]): the pollers cost less CPU."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass
class PollerState:
    etag: str | None = None


class Clients:
    """Concurrent HTTP clients on one aiohttp connection pool, in a loop of their own that
    lives across calls (the connections stay open between slices)."""

    def __init__(self, base_url: str, connections: int, timeout: float) -> None:
        self.base_url = base_url
        self.connections = connections
        self.timeout = timeout
        self.runner = asyncio.Runner(loop_factory=_loop_factory())
        self.session = self.runner.run(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would, so a
        # request never goes out on a connection the server is closing.
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, keepalive_timeout=3
        )
        return aiohttp.ClientSession(
            self.base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )

    def close(self) -> None:
        self.runner.run(self.session.close())
        self.runner.close()

    async def _get(self, path: str, headers: dict[str, str], tally: Tally) -> str | None:
        """One GET, timed to the end of its body; returns its ETag."""
        started = time.perf_counter()
        etag = None
        try:
            async with self.session.get(path, headers=headers) as response:
                await response.read()
                code = str(response.status)
                etag = response.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError) as exc:
            code = type(exc).__name__
        tally.add(time.perf_counter() - started, code)
        return etag

    async def _poll(
        self,
        path: str,
        headers: dict[str, str],
        state: PollerState,
        deadline: float,
        think: float,
        tally: Tally,
    ) -> None:
        """A dashboard: GET with the last ETag seen, wait `think`, again, until `deadline`."""
        if think:
            await asyncio.sleep(random.uniform(0, think))  # not all in step
        while time.monotonic() < deadline:
            sent = {**headers, "If-None-Match": state.etag} if state.etag else headers
            etag = await self._get(path, sent, tally)
            if etag is not None:
                state.etag = etag
            if think:
                await asyncio.sleep(think)

    def poll(
        self,
        path: str,
        headers: dict[str, str],
        states: list[PollerState],
        seconds: float,
        think: float,
    ) -> Tally:
        """Every poller loops on `path` for `seconds`; requests under way then are finished
        and counted, and the slice lasts until the last one is."""

        async def run() -> Tally:
            tally = Tally()
            started = time.monotonic()
            deadline = started + seconds
            await asyncio.gather(
                *(self._poll(path, headers, s, deadline, think, tally) for s in states)
            )
            tally.seconds = time.monotonic() - started
            return tally

        return self.runner.run(run())

    def fetch(
        self, requests: Sequence[tuple[str, str]], headers: dict[str, str], concurrency: int
    ) -> dict[str, Tally]:
        """(label, path) requests, `concurrency` at a time in this order; a tally per label."""

        async def run() -> dict[str, Tally]:
            tallies = {label: Tally() for label, _ in requests}
            queue = list(reversed(requests))

            async def client() -> None:
                while queue:
                    label, path = queue.pop()
                    await self._get(path, headers, tallies[label])

            started = time.monotonic()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            for tally in tallies.values():
                tally.seconds = time.monotonic() - started
            return tallies

        return self.runner.run(run())


# ----------------------------------------------------------------------------- 1. under load


@dataclass
class Meter:
    """CPU of the API, of this process (the pollers) and of the machine, and the fan-out's
    progress at the sinks, read between slices."""

    components: Components
    service: Service
    http: httpx.Client

    def read(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        webhooks, emails = self.service.sinks.stats(self.http)
        return {
            "at": time.monotonic(),
            "api_cpu": self.components.cpu()["api"],
            "client_cpu": usage.ru_utime + usage.ru_stime,
            "machine_busy": machine_cpu()[0],
            "received": webhooks["count"] + emails["count"],
        }


@dataclass
class Block:
    """ABBA rounds of slices, with each endpoint's tally and CPU. Times in seconds from
    `origin`, the declaration."""

    origin: float
    tallies: dict[str, Tally] = field(default_factory=lambda: {e: Tally() for e in ENDPOINTS})
    api_cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    client_cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    machine_busy: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    received: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    slices: list[dict[str, Any]] = field(default_factory=list)

    def run_round(
        self,
        clients: Clients,
        meter: Meter,
        paths: dict[str, tuple[str, dict[str, str]]],
        states: dict[str, list[PollerState]],
        seconds: float,
        think: float,
        expected: int,
    ) -> None:
        for endpoint in ABBA:
            path, headers = paths[endpoint]
            before = meter.read()
            tally = clients.poll(path, headers, states[endpoint], seconds, think)
            after = meter.read()
            self.tallies[endpoint].merge(tally)
            for name, counter in (
                ("api_cpu", self.api_cpu),
                ("client_cpu", self.client_cpu),
                ("machine_busy", self.machine_busy),
                ("received", self.received),
            ):
                counter[endpoint] += after[name] - before[name]
            summary = tally.summary()
            self.slices.append(
                {
                    "endpoint": endpoint,
                    "started_s": round(before["at"] - self.origin, 3),
                    "seconds": summary["seconds"],
                    "requests": summary["requests"],
                    "requests_per_second": summary["requests_per_second"],
                    "p50_ms": summary["p50_ms"],
                    "not_modified_304": summary["not_modified_304"],
                    "errors": summary["errors"],
                    "received_at_start": int(before["received"]),
                    "received_at_end": int(after["received"]),
                    "fanout_running_at_start": before["received"] < expected,
                    "fanout_running_at_end": after["received"] < expected,
                }
            )

    def report(self, fanout_seconds: float) -> dict[str, Any]:
        nproc = os.cpu_count() or 1
        endpoints: dict[str, Any] = {}
        for endpoint, tally in self.tallies.items():
            summary = tally.summary()
            seconds = tally.seconds
            mine = [s for s in self.slices if s["endpoint"] == endpoint]
            overlap = sum(
                min(s["seconds"], max(0.0, fanout_seconds - s["started_s"])) for s in mine
            )
            endpoints[endpoint] = {
                **summary,
                "api_cpu_ms_per_request": round(
                    1000 * self.api_cpu[endpoint] / max(tally.requests, 1), 3
                ),
                "api_cpu_share": round(self.api_cpu[endpoint] / seconds, 2) if seconds else None,
                "client_cpu_share": round(self.client_cpu[endpoint] / seconds, 2)
                if seconds
                else None,
                "machine_busy_share": round(self.machine_busy[endpoint] / (seconds * nproc), 2)
                if seconds
                else None,
                "deliveries_per_second": round(self.received[endpoint] / seconds, 1)
                if seconds
                else None,
                "fanout_overlap": round(overlap / seconds, 3) if seconds else None,
            }
        status, health = endpoints["status"], endpoints["healthz"]
        return {
            "status": status,
            "healthz": health,
            "ratio": {
                "requests_per_second": _ratio(
                    status["requests_per_second"], health["requests_per_second"]
                ),
                "p50": _ratio(status["p50_ms"], health["p50_ms"], 2),
                "p90": _ratio(status["p90_ms"], health["p90_ms"], 2),
                "p99": _ratio(status["p99_ms"], health["p99_ms"], 2),
                "api_cpu_per_request": _ratio(
                    status["api_cpu_ms_per_request"], health["api_cpu_ms_per_request"], 2
                ),
            },
            "slices": self.slices,
        }


def under_load(
    args: argparse.Namespace, service: Service, children: Children, http: httpx.Client
) -> dict[str, Any]:
    n: int = args.members
    expected = 2 * n  # an email and a webhook each
    log(f"importing {n} members")
    created = import_members(service.api, n, service.sinks.webhook_base)
    if created != n:
        raise BenchError(f"expected {n} new members, the import created {created}")
    viewer = {"Authorization": f"Bearer {service.create_key('viewer')}"}
    meter = Meter(Components({"api": service.api_child.process.pid}), service, http)
    clients = Clients(service.base_url, args.pollers, args.request_timeout)
    states = {e: [PollerState() for _ in range(args.pollers)] for e in ENDPOINTS}
    try:
        # Every poller's connection opened before anything is measured.
        clients.poll("/healthz", {}, [PollerState() for _ in range(args.pollers)], 0.5, 0)
        log("declaring")
        response = service.api.post("/v1/incidents", json=declare_body())
        declared_at = time.monotonic()
        if response.status_code != 202:
            raise BenchError(f"declare failed: {response.status_code} {response.text[:2000]}")
        incident_id = response.json()["id"]
        paths = {
            "status": (f"/v1/incidents/{incident_id}/status", viewer),
            "healthz": ("/healthz", {}),
        }
        during = Block(declared_at)
        started = time.monotonic()
        while True:
            children.check_alive()
            log(f"ABBA round of {args.slice_seconds:g} s slices")
            during.run_round(
                clients, meter, paths, states, args.slice_seconds, args.think, expected
            )
            running = during.slices[-1]["fanout_running_at_end"]
            if not running or time.monotonic() - started > args.max_load_seconds:
                break
        fanout = wait_for_fanout(args, service, http, incident_id, expected, declared_at)
        after: Block | None = None
        if args.after_slice_seconds > 0:
            log(f"after the fan-out: ABBA round of {args.after_slice_seconds:g} s slices")
            clients.poll("/healthz", {}, [PollerState() for _ in range(args.pollers)], 0.5, 0)
            after = Block(declared_at)
            after.run_round(
                clients, meter, paths, states, args.after_slice_seconds, args.think, expected
            )
    finally:
        clients.close()
    return {
        "members": n,
        "incident_id": incident_id,
        "during_fanout": during.report(fanout["seconds"]),
        "after_fanout": after.report(fanout["seconds"]) if after else None,
        "fanout": fanout,
    }


def wait_for_fanout(
    args: argparse.Namespace,
    service: Service,
    http: httpx.Client,
    incident_id: str,
    expected: int,
    declared_at: float,
) -> dict[str, Any]:
    """Until every delivery reached its sink, or the ledger holds no open row. The sinks
    are asked first: an API swamped by the pollers may take minutes to answer again."""
    log("waiting for the end of the fan-out")
    path = f"/v1/incidents/{incident_id}/status"

    def ledger() -> dict[str, int] | None:
        try:
            response = service.api.get(path, timeout=min(args.request_timeout, 2.0))
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        by_status: dict[str, int] = response.json()["deliveries"]["by_status"]
        return by_status

    by_status = None
    last_ledger_read = 0.0
    while True:
        webhooks, emails = service.sinks.stats(http)
        received = webhooks["count"] + emails["count"]
        if received >= expected:
            break
        if time.monotonic() - last_ledger_read > 1.0:
            by_status, last_ledger_read = ledger(), time.monotonic()
            if by_status is not None and is_final(by_status):
                break  # some deliveries failed: they will not reach the sinks
        if time.monotonic() > args.deadline:
            raise BenchError(f"the fan-out did not end before the deadline ({received} sent)")
        time.sleep(0.2)
    # The ledger is written after the sends: a few seconds for the last rows.
    settle = time.monotonic() + 5
    while (by_status is None or not is_final(by_status)) and time.monotonic() < settle:
        time.sleep(0.2)
        by_status = ledger()
    done_at = max(webhooks["last_at"] or declared_at, emails["last_at"] or declared_at)
    return {
        "deliveries_expected": expected,
        "received": received,
        # None: the API did not answer (or not 200) within the 5 s after the last delivery.
        "final_status": by_status,
        "seconds": round(done_at - declared_at, 3),
        "deliveries_per_second": round(received / (done_at - declared_at), 1)
        if done_at > declared_at
        else None,
    }


# ----------------------------------------------------------------------------- 2. roster size


@dataclass(frozen=True)
class Seeded:
    incident_id: uuid.UUID
    members: int
    deliveries: int
    failed: int
    answered: int
    seconds: float


def insert_members(session: Session, count: int, country: str, now: datetime) -> None:
    """`count` active members of ROSTER_NETWORK in `country`, with an email and a webhook."""
    tag = f"{country.lower()}-{uuid.uuid4().hex[:6]}"
    for first in range(0, count, _CHUNK):
        rows = [
            {
                "id": uuid7(),
                "network": ROSTER_NETWORK,
                "name": f"Member {tag} {i}",
                "country": country,
                "languages": LANGUAGES[i % len(LANGUAGES)],
                "themes": [],
                "tags": [],
                "email": f"roster-{tag}-{i}@bench.example.org",
                "webhook_url": f"https://hooks.bench.example.org/{tag}/{i}",
                "timezone": "UTC",
                "status": "active",
                "consent_given_at": now,
                "consent_method": "written",
                "created_at": now,
                "updated_at": now,
            }
            for i in range(first, min(first + _CHUNK, count))
        ]
        session.execute(insert(MEMBERS), rows)


def seed_incident(
    factory: sessionmaker[Session],
    *,
    members: int,
    country: str,
    answered_share: float,
    rng: random.Random,
) -> Seeded:
    """An incident of `members` new members whose fan-out is over, with answers.

    The incident, its targets, its ledger rows and their counters are written by the
    service's own `declare` (nothing is dispatched: the worker is not running); the ledger's
    own `transition` then moves every delivery to failed (one in FAILED_ONE_IN) or sent, with
    its counters. Answers (email links, first answers only) are inserted in bulk with the
    counters `app.acks.service` keeps for them; `check_counters` recounts all from the rows.
    """
    started = time.monotonic()
    with session_scope(factory) as session:
        insert_members(session, members, country, utcnow())
    with session_scope(factory) as session:
        body = declare_body()
        body["title"] = f"Roster benchmark: {members} members"
        body["audience"] = {"networks": [ROSTER_NETWORK], "countries": [country]}
        body["followup"] = {
            "quotas": [
                {
                    "network": ROSTER_NETWORK,
                    "languages": ["fr"],
                    "responses": ["will_engage"],
                    "min": max(1, members // 10),
                }
            ]
        }
        incident, _ = declare(
            session,
            IncidentCreate.model_validate(body),
            actor=Principal.cli(),
            idempotency_key=None,
            dispatch=lambda _briefing_id: None,
            chunk_members=members,  # every row now: the seeding below needs them
        )
        now = utcnow()
        mine = Delivery.incident_id == incident.id
        failed = ledger.transition(
            session,
            where=mine & (Delivery.id % FAILED_ONE_IN == 0),
            from_status=DeliveryStatus.PENDING,
            to_status=DeliveryStatus.FAILED,
            values={"attempts": 1, "last_error": "bench: seeded failure"},
            now=now,
        )
        sent = ledger.transition(
            session,
            where=mine,
            from_status=DeliveryStatus.PENDING,
            to_status=DeliveryStatus.SENT,
            values={"attempts": 1, "sent_at": now},
            now=now,
        )
        answered = add_answers(session, incident.id, answered_share, rng)
        return Seeded(
            incident.id,
            members,
            len(failed) + len(sent),
            len(failed),
            answered,
            round(time.monotonic() - started, 2),
        )


def add_answers(session: Session, incident_id: uuid.UUID, share: float, rng: random.Random) -> int:
    """First answers, through the email link, of a share of the members sent an email,
    `delay` after the declaration (5 s to 2 h, log-uniform: some lie ahead of the clock,
    which no status figure minds), with their event numbers and the answer, delay and
    quota counters. The timeline gets no quota_met event."""
    incident = get_incident(session, incident_id)
    emails = list(
        session.execute(
            select(
                Delivery.id,
                Delivery.member_id,
                Delivery.language,
                Delivery.sent_at,
                Member.network,
                Member.country,
                Member.languages,
            )
            .join(Member, Member.id == Delivery.member_id)
            .where(
                Delivery.incident_id == incident_id,
                Delivery.channel == "email",
                Delivery.status == DeliveryStatus.SENT,
            )
            .order_by(Delivery.id)
        )
    )
    chosen = rng.sample(emails, round(share * len(emails)))
    answers = []
    for row in chosen:
        delay = timedelta(seconds=math.exp(rng.uniform(math.log(5), math.log(7200))))
        answers.append((row, rng.choice(incident.responses), incident.declared_at + delay))
    # Answers take the incident's next event numbers in time order, as one at a time would
    # (app.timeline.take_seq, here for all at once).
    answers.sort(key=lambda answer: answer[2])
    last_seq = session.execute(
        update(Incident)
        .where(Incident.id == incident_id)
        .values(event_seq=Incident.event_seq + len(answers), updated_at=Incident.updated_at)
        .returning(Incident.event_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    session.expire(incident, ["event_seq"])
    first_seq = last_seq - len(answers) + 1
    for start in range(0, len(answers), _CHUNK):
        session.execute(
            insert(ACKS),
            [
                {
                    "incident_id": incident_id,
                    "member_id": row.member_id,
                    "delivery_id": row.id,
                    "response": response,
                    "route": "page",
                    "channel": "email",
                    "briefing_version": 1,
                    "language": row.language,
                    "answered_at": answered_at,
                    "delay_seconds": (answered_at - row.sent_at).total_seconds(),
                    "late": False,
                    "event_seq": first_seq + start + offset,
                }
                for offset, (row, response, answered_at) in enumerate(
                    answers[start : start + _CHUNK]
                )
            ],
        )
    current = [
        {
            "incident_id": incident_id,
            "member_id": a.member_id,
            "ack_id": a.id,
            "response": a.response,
            "answered_at": a.answered_at,
            "first_answered_at": a.answered_at,
        }
        for a in session.execute(
            select(Ack.id, Ack.member_id, Ack.response, Ack.answered_at).where(
                Ack.incident_id == incident_id
            )
        )
    ]
    for start in range(0, len(current), _CHUNK):
        session.execute(insert(CURRENT_ACKS), current[start : start + _CHUNK])
    # The counters, as app.acks.service._count_answer moves them one answer at a time.
    now = utcnow()
    by_response = Counter(response for _, response, _ in answers)
    by_bucket = Counter(
        delay_bucket((answered_at - incident.declared_at).total_seconds())
        for _, _, answered_at in answers
    )
    quotas = incident.followup.get("quotas", [])
    by_quota = Counter(
        index
        for row, response, _ in answers
        for index, quota in enumerate(quotas)
        if response in quota["responses"]
        and in_segment(quota, row.network, row.country, row.languages)
    )
    counters.add(
        session,
        AnswerCounter,
        [
            {"incident_id": incident_id, "response": r, "count": c, "updated_at": now}
            for r, c in by_response.items()
        ],
        keys=("incident_id", "response"),
        sums=("count",),
        latest=("updated_at",),
    )
    counters.add(
        session,
        AnswerDelayCounter,
        [{"incident_id": incident_id, "bucket": b, "count": c} for b, c in by_bucket.items()],
        keys=("incident_id", "bucket"),
        sums=("count",),
    )
    counters.add(
        session,
        QuotaCounter,
        [
            {"incident_id": incident_id, "quota_index": i, "targeted": 0, "answered": c}
            for i, c in by_quota.items()
        ],
        keys=("incident_id", "quota_index"),
        sums=("answered",),
    )
    return len(answers)


def check_counters(session: Session, incident_id: uuid.UUID) -> list[str]:
    """What the status (read from counters) says that a recount of the rows does not."""
    status = incident_status(session, incident_id)
    incident = get_incident(session, incident_id)
    by_channel: dict[str, dict[str, int]] = {}
    for channel, state, count in session.execute(
        select(Delivery.channel, Delivery.status, func.count())
        .where(Delivery.incident_id == incident_id)
        .group_by(Delivery.channel, Delivery.status)
    ):
        by_channel.setdefault(channel, {})[state] = count
    first_answers = list(
        session.scalars(
            select(CurrentAck.first_answered_at).where(CurrentAck.incident_id == incident_id)
        )
    )
    histogram = Counter(
        delay_bucket(max((at - incident.declared_at).total_seconds(), 0.0)) for at in first_answers
    )
    recount = {
        "targeted": session.scalar(
            select(func.count())
            .select_from(IncidentTarget)
            .where(IncidentTarget.incident_id == incident_id)
        ),
        "deliveries.by_channel": by_channel,
        "answers.by_response": dict(
            session.execute(
                select(CurrentAck.response, func.count())
                .where(CurrentAck.incident_id == incident_id)
                .group_by(CurrentAck.response)
            ).all()
        ),
        "answer_delay_counters": dict(histogram),
        "quotas": [(p.targeted, p.answered) for p in quota_progress(session, incident)],
    }
    read = {
        "targeted": status["targeted"],
        "deliveries.by_channel": status["deliveries"]["by_channel"],
        "answers.by_response": status["answers"]["by_response"],
        "answer_delay_counters": dict(
            session.execute(
                select(AnswerDelayCounter.bucket, AnswerDelayCounter.count).where(
                    AnswerDelayCounter.incident_id == incident_id, AnswerDelayCounter.count != 0
                )
            ).all()
        ),
        "quotas": [(q["targeted"], q["answered"]) for q in status["quotas"]],
    }
    return [
        f"{key}: status says {read[key]}, the rows {recount[key]}"
        for key in recount
        if read[key] != recount[key]
    ]


def read_in_process(
    engine: Engine, factory: sessionmaker[Session], incidents: dict[str, uuid.UUID], reads: int
) -> dict[str, dict[str, Any]]:
    """`status_document` called directly (the route's body and ETag), a session per read as
    a request has, the incidents alternating: its time without HTTP and authentication, and
    the SQL statements it runs."""
    times: dict[str, list[float]] = {label: [] for label in incidents}
    statements: Counter[str] = Counter()
    current = ""

    def count(*_args: Any) -> None:
        statements[current] += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(reads):
            for current, incident_id in incidents.items():
                started = time.perf_counter()
                with factory() as session:
                    status_document(session, incident_id)
                times[current].append(time.perf_counter() - started)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    result = {}
    for label, values in times.items():
        values.sort()
        result[label] = {
            "reads": reads,
            "p50_ms": _ms(percentile(values, 0.5)),
            "p99_ms": _ms(percentile(values, 0.99)),
            "statements_per_read": statements[label] / reads,
        }
    return result


def roster_size(args: argparse.Namespace, service: Service, children: Children) -> dict[str, Any]:
    # Nothing may send, sweep or remind the seeded incidents while they are read.
    for child in (service.beat, service.worker):
        if child is not None:
            children.stop(child)
    # A fresh API process (nothing left over from part 1, such as queued requests) that
    # reads the status at every request: the per-process status cache would otherwise
    # answer most of these reads from memory, and what is measured here is the read.
    log("restarting the API without its status cache")
    service.env["RRMM_STATUS_CACHE_SECONDS"] = "0"
    service.restart_api(children)
    engine = create_db_engine(service.backend.database_url)
    factory = create_session_factory(engine)
    rng = random.Random(args.seed)
    sizes = {"small": args.members_small, "large": args.members_large}
    countries = {"small": SMALL_COUNTRY, "large": LARGE_COUNTRY}
    seeded: dict[str, Seeded] = {}
    clients = Clients(service.base_url, args.roster_concurrency, args.request_timeout)
    try:
        for label in ("small", "large"):
            log(f"seeding an incident of {sizes[label]} members")
            seeded[label] = seed_incident(
                factory,
                members=sizes[label],
                country=countries[label],
                answered_share=args.answered_share,
                rng=rng,
            )
            log(f"seeded in {seeded[label].seconds:.1f}s")
        mismatches = {}
        with factory() as session:
            for label, incident in seeded.items():
                mismatches[label] = check_counters(session, incident.incident_id)
        viewer = {"Authorization": f"Bearer {service.create_key('viewer')}"}
        status_paths = {
            label: f"/v1/incidents/{s.incident_id}/status" for label, s in seeded.items()
        }
        # Small and large alternate, request after request: both see the same machine.
        alternating = [
            (label, status_paths[label]) for _ in range(args.roster_requests) for label in sizes
        ]
        log("warming up")
        clients.fetch(alternating[:40], viewer, 1)
        log(f"status: {args.roster_requests} sequential reads of each")
        sequential = clients.fetch(alternating, viewer, 1)
        log(f"status: {args.roster_requests} reads of each, {args.roster_concurrency} at a time")
        concurrent = clients.fetch(alternating, viewer, args.roster_concurrency)
        coverage: dict[str, Tally] = {}
        if args.coverage_requests:
            log(f"control: {args.coverage_requests} coverage reads of each")
            coverage = clients.fetch(
                [
                    (label, f"/v1/incidents/{s.incident_id}/coverage?by=network")
                    for _ in range(args.coverage_requests)
                    for label, s in seeded.items()
                ],
                viewer,
                1,
            )
        bodies = {label: service.api.get(path).content for label, path in status_paths.items()}
        log("status: in-process reads")
        in_process: dict[str, Any] = read_in_process(
            engine,
            factory,
            {label: s.incident_id for label, s in seeded.items()},
            args.roster_requests,
        )
    finally:
        clients.close()
        engine.dispose()

    def both(tallies: dict[str, Tally]) -> dict[str, Any]:
        small, large = tallies["small"].summary(), tallies["large"].summary()
        return {
            "small": small,
            "large": large,
            "ratio_large_small": {
                q: _ratio(large[f"{q}_ms"], small[f"{q}_ms"], 2) for q in ("p50", "p90", "p99")
            },
        }

    return {
        "members": sizes,
        "seeded": {
            label: {
                "incident_id": str(s.incident_id),
                "members": s.members,
                "deliveries": s.deliveries,
                "failed": s.failed,
                "answered": s.answered,
                "seconds": s.seconds,
                "status_bytes": len(bodies[label]),
            }
            for label, s in seeded.items()
        },
        "counters_match_rows": not any(mismatches.values()),
        "mismatches": mismatches,
        "http_sequential": both(sequential),
        "http_concurrent": {"concurrency": args.roster_concurrency, **both(concurrent)},
        "in_process": {
            **in_process,
            "ratio_large_small_p50": _ratio(
                in_process["large"]["p50_ms"], in_process["small"]["p50_ms"], 2
            ),
        },
        "coverage_control": both(coverage) if coverage else None,
    }


# ----------------------------------------------------------------------------- 3. listeners


def listeners(
    args: argparse.Namespace,
    service: Service,
    children: Children,
    http: httpx.Client,
    load: dict[str, Any] | None,
) -> dict[str, Any]:
    """The listeners part (bench/listeners.py) on the load part's incident, or on one of its
    own once its fan-out is over."""
    if load is not None:
        incident_id = load["incident_id"]
    else:
        n: int = args.members
        log(f"importing {n} members")
        import_members(service.api, n, service.sinks.webhook_base)
        response = service.api.post("/v1/incidents", json=declare_body())
        if response.status_code != 202:
            raise BenchError(f"declare failed: {response.status_code} {response.text[:2000]}")
        incident_id = response.json()["id"]
        wait_for_fanout(args, service, http, incident_id, 2 * n, time.monotonic())
    children.check_alive()
    return listeners_part(args, service, incident_id, fanout_over(service.api, incident_id))


# ----------------------------------------------------------------------------- the run


def run(
    args: argparse.Namespace, tmp: Path, children: Children, backend_box: list[Backend]
) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    http = httpx.Client(timeout=30)
    service = start_service(
        args,
        tmp,
        children,
        backend_box,
        http,
        api_workers=args.api_workers,
        with_worker=args.only != "roster",
    )
    result: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_start": [round(v, 2) for v in load_at_start],
        },
        "backend": service.backend.name,
        "api": {"command": "rrmm api", "server_processes": args.api_workers},
        "settings": {
            "pollers": args.pollers,
            "think_seconds": args.think,
            "slice_seconds": args.slice_seconds,
            "after_slice_seconds": args.after_slice_seconds,
            "worker_concurrency": args.worker_concurrency,
            "roster_requests": args.roster_requests,
            "roster_concurrency": args.roster_concurrency,
            "answered_share": args.answered_share,
            "listeners": args.listeners,
            "listeners_idle_seconds": args.listeners_idle_seconds,
            "listeners_changes": args.listeners_changes,
        },
    }
    if args.only in (None, "load"):
        result["load"] = under_load(args, service, children, http)
    if args.listeners:
        result["listeners"] = listeners(args, service, children, http, result.get("load"))
    if args.only in (None, "roster"):
        result["roster"] = roster_size(args, service, children)
    result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


# ----------------------------------------------------------------------------- the report


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return text.rjust(width)


def _table(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str]]) -> Iterator[str]:
    widths = [max(len(title), 8) for title, _ in columns]
    yield (
        "    " + " " * 16 + " ".join(t.rjust(w) for (t, _), w in zip(columns, widths, strict=True))
    )
    for name, row in rows.items():
        cells = " ".join(
            _cell(row.get(key), w) for (_, key), w in zip(columns, widths, strict=True)
        )
        yield f"    {name:<16}{cells}"


LOAD_COLUMNS = (
    ("requests", "requests"),
    ("req/s", "requests_per_second"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("200", "ok_200"),
    ("304", "not_modified_304"),
    ("errors", "errors"),
    ("API ms/req", "api_cpu_ms_per_request"),
    ("client CPU", "client_cpu_share"),
    ("fan-out", "fanout_overlap"),
)
LATENCY_COLUMNS = (
    ("requests", "requests"),
    ("req/s", "requests_per_second"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("errors", "errors"),
)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:g}x"


def _errors(rows: dict[str, dict[str, Any]]) -> Iterator[str]:
    for name, row in rows.items():
        if row["error_kinds"]:
            kinds = ", ".join(f"{n} x {kind}" for kind, n in row["error_kinds"].items())
            yield f"    {name} errors: {kinds} (HTTP status, or the client's exception)"


def report_lines(result: dict[str, Any], args: argparse.Namespace) -> Iterator[str]:
    machine = result["machine"]
    yield (
        f"RRMM status benchmark: {result['backend']}, {machine['nproc']} CPUs, Python "
        f"{machine['python']}, load average {machine['loadavg_at_start']} at start, "
        f"{machine['loadavg_at_end']} at end"
    )
    yield (
        f"API: `rrmm api` with {args.api_workers} uvicorn process(es)"
        f"{' (as `rrmm run` serves it)' if args.api_workers == 1 else ''}"
    )
    load = result.get("load")
    if load:
        think = "0 s (maximum pressure)" if not args.think else f"{args.think:g} s (dashboards)"
        fanout = load["fanout"]
        yield ""
        yield (
            f"1. Under load: {args.pollers} pollers on the status of an incident of "
            f"{load['members']} members (ETag kept), think time {think}"
        )
        yield (
            f"   slices of {args.slice_seconds:g} s in ABBA rounds (status, healthz, healthz, "
            "status), repeated while the fan-out runs"
        )
        for title, block in (
            ("during the fan-out", load["during_fanout"]),
            ("after the fan-out (the status unchanged)", load["after_fanout"]),
        ):
            if not block:
                continue
            yield f"   {title}:"
            yield from _table({e: block[e] for e in ENDPOINTS}, LOAD_COLUMNS)
            yield from _errors({e: block[e] for e in ENDPOINTS})
            ratio = block["ratio"]
            yield (
                f"    status / healthz: req/s {_x(ratio['requests_per_second'])}, p50 "
                f"{_x(ratio['p50'])}, p90 {_x(ratio['p90'])}, p99 {_x(ratio['p99'])}, API CPU "
                f"per request {_x(ratio['api_cpu_per_request'])}"
            )
        during = load["during_fanout"]
        yield (
            f"   fan-out: {fanout['received']} of {fanout['deliveries_expected']} deliveries in "
            f"{fanout['seconds']} s ({fanout['deliveries_per_second']}/s), "
            f"{during['status']['deliveries_per_second']}/s during status slices, "
            f"{during['healthz']['deliveries_per_second']}/s during healthz slices"
        )
        ran = sum(s["fanout_running_at_end"] for s in during["slices"])
        yield (
            f"   the fan-out was still running at the end of {ran} of {len(during['slices'])} "
            f"slices; the fan-out column is the share of each endpoint's time it ran"
        )
        if min(during[e]["fanout_overlap"] or 0 for e in ENDPOINTS) < 0.9:
            yield (
                "   note: the fan-out ended before the slices did (fan-out column < 0.9): "
                "raise --members or shorten --slice-seconds"
            )
    crowd = result.get("listeners")
    if crowd:
        yield from listener_lines(crowd)
    roster = result.get("roster")
    if roster:
        sizes = roster["members"]
        yield ""
        yield (
            f"2. Roster size: status of an incident of {sizes['small']} members and of one of "
            f"{sizes['large']} members, same database"
        )
        seeded = roster["seeded"]
        yield (
            "   seeded: "
            + "; ".join(
                f"{s['members']} members, {s['deliveries']} deliveries ({s['failed']} failed), "
                f"{s['answered']} answers in {s['seconds']} s"
                for s in seeded.values()
            )
            + f"; counters match the rows: {'yes' if roster['counters_match_rows'] else 'NO'}"
        )
        for title, block in (
            ("HTTP, one at a time (small and large alternate)", roster["http_sequential"]),
            (
                f"HTTP, {roster['http_concurrent']['concurrency']} at a time",
                roster["http_concurrent"],
            ),
        ):
            yield f"   {title}:"
            rows = {f"{sizes[k]} members": block[k] for k in ("small", "large")}
            yield from _table(rows, LATENCY_COLUMNS)
            yield from _errors(rows)
            r = block["ratio_large_small"]
            yield f"    large / small: p50 {_x(r['p50'])}, p90 {_x(r['p90'])}, p99 {_x(r['p99'])}"
        in_process = roster["in_process"]
        yield (
            "   in process (status_document alone): "
            + ", ".join(
                f"{sizes[k]} members p50 {in_process[k]['p50_ms']} ms, p99 "
                f"{in_process[k]['p99_ms']} ms, {in_process[k]['statements_per_read']:g} SQL "
                "statements"
                for k in ("small", "large")
            )
            + f"; large / small p50 {_x(in_process['ratio_large_small_p50'])}"
        )
        control = roster["coverage_control"]
        if control:
            yield (
                f"   control, /coverage?by=network (documented to grow with the audience): p50 "
                f"{control['small']['p50_ms']} ms vs {control['large']['p50_ms']} ms "
                f"({_x(control['ratio_large_small']['p50'])})"
            )


def listener_lines(crowd: dict[str, Any]) -> Iterator[str]:
    memory, idle, changes = crowd["api_memory_kb"], crowd["idle"], crowd["changes"]
    yield ""
    yield (
        f"3. Listeners: {crowd['listeners']} event streams on one API process "
        f"({crowd['roles']['viewer']} viewer, {crowd['roles']['operator']} operator, "
        f"{crowd['keys']} keys), all connected in {crowd['connect_seconds']} s"
    )
    yield (
        f"   API memory: PSS {memory['before']['pss_kb'] // 1024} MB before, "
        f"{memory['connected']['pss_kb'] // 1024} MB connected (+{crowd['added_pss_mb']} MB, "
        f"{crowd['added_pss_kb_per_listener']} kB per listener), "
        f"{memory['after_changes']['pss_kb'] // 1024} MB after the changes"
    )
    yield (
        f"   idle {idle['seconds']} s: API CPU {idle['api_cpu_share_of_a_core']:.1%} of a core "
        f"({idle['status_events']} status events)"
    )
    delay, spread = changes["change_to_listener_s"], changes["spread_s"]
    yield (
        f"   {changes['changes']} briefing updates fanned out: {changes['status_documents']} "
        f"status documents, every listener saw every one: "
        f"{'yes' if changes['every_listener_saw_every_status'] else 'NO'} "
        f"({changes['missed']} missed); update to a listener's next status p50 {delay['p50']} s, "
        f"max {delay['max']} s; first to last listener per status p50 {spread['p50']} s, "
        f"max {spread['max']} s; API CPU {changes['api_cpu_ms_per_status_event']} ms per "
        "status event delivered"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.status", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--only", choices=("load", "roster", "listeners"), help="run one part only")
    parser.add_argument("--api-workers", type=int, default=1, help="`rrmm api --workers`")
    parser.add_argument(
        "--request-timeout", type=float, default=10, help="seconds; longer is an error"
    )
    load = parser.add_argument_group("1. under load")
    load.add_argument("--members", type=int, default=2000, help="members the fan-out reaches")
    load.add_argument("--pollers", type=int, default=200)
    load.add_argument(
        "--think", type=float, default=0.0, help="seconds a poller waits between its requests"
    )
    load.add_argument(
        "--slice-seconds", type=float, help="one slice of polling (default 1, or 5 x --think)"
    )
    load.add_argument(
        "--after-slice-seconds",
        type=float,
        help="slices of the round after the fan-out (default 2, or 5 x --think; 0: none)",
    )
    load.add_argument(
        "--max-load-seconds", type=float, default=120, help="stop adding rounds after this"
    )
    roster = parser.add_argument_group("2. roster size")
    roster.add_argument("--members-small", type=int, default=100)
    roster.add_argument("--members-large", type=int, default=100_000)
    roster.add_argument("--roster-requests", type=int, default=500, help="reads of each status")
    roster.add_argument("--roster-concurrency", type=int, default=20)
    roster.add_argument(
        "--coverage-requests", type=int, default=10, help="control reads of /coverage (0: none)"
    )
    roster.add_argument("--answered-share", type=float, default=0.3)
    roster.add_argument("--seed", type=int, default=1, help="of the answers' random choices")
    crowd = parser.add_argument_group("3. listeners (event streams)")
    crowd.add_argument(
        "--listeners", type=int, help="event-stream listeners on one API process (0: none)"
    )
    crowd.add_argument(
        "--listeners-idle-seconds", type=float, default=10, help="CPU measured with no change"
    )
    crowd.add_argument(
        "--listeners-changes", type=int, default=2, help="briefing updates fanned out to watch"
    )
    add_service_arguments(parser)
    parser.set_defaults(timeout=900)
    args = parser.parse_args(argv)
    check_service_arguments(parser, args)
    if args.slice_seconds is None:
        args.slice_seconds = max(1.0, 5 * args.think)
    if args.listeners is None:
        args.listeners = 1000 if args.only == "listeners" else 0
    if args.listeners < 0 or args.listeners_changes < 1 or args.listeners_idle_seconds <= 0:
        parser.error("--listeners >= 0, --listeners-changes >= 1, --listeners-idle-seconds > 0")
    if args.after_slice_seconds is None:
        args.after_slice_seconds = max(2.0, 5 * args.think)
    for name in (
        "members",
        "pollers",
        "members_small",
        "members_large",
        "roster_requests",
        "roster_concurrency",
        "api_workers",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.answered_share <= 1:
        parser.error("--answered-share is a share: 0 to 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def emit(result: dict[str, Any]) -> None:
        print("\n".join(report_lines(result, args)), flush=True)
        print(json.dumps(result, separators=(",", ":"), default=str), flush=True)

    return run_bench(args, run, emit)


if __name__ == "__main__":
    raise SystemExit(main())
