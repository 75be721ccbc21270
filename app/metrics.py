"""Prometheus metrics at `/metrics`.

HTTP latency is measured in the API process, labelled by route template (`/ack/{token}`,
never the token). Everything about the business (deliveries, answers, incidents, queue lag,
workers, the sweeper) is read from the database at scrape time by a collector: the database
is the source of truth, so any API replica gives the same numbers and no multiprocess
state is needed for workers.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from datetime import datetime

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydantic import SecretStr
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app import timeline
from app.config import Settings
from app.errors import NotAuthenticated, Problem
from app.health.service import last_sweep, sweep_runs, worker_health
from app.models import AnswerCounter, Delivery, DeliveryCounter, Incident, IncidentEvent
from app.models.base import utcnow
from app.state import AppState, app_state
from app.vocabulary import DeliveryStatus, IncidentStatus, TimelineEventKind

log = structlog.get_logger(__name__)

FANOUT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
INCIDENT_STATUSES = tuple(IncidentStatus)
# Requests that matched no route (404s, 413s before routing): one label, never the path.
UNMATCHED = "<unmatched>"

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        401: {"model": Problem, "description": "RRMM_METRICS_TOKEN is set and not given."},
    },
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: aggregates only, no contact detail or text. No API key; when
    `RRMM_METRICS_TOKEN` is set, `Authorization: Bearer <token>` is required."""
    state = app_state(request.app)
    _check_token(state.settings.metrics_token, request.headers.get("authorization"))
    registry = state.metrics_registry
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


def _check_token(expected: SecretStr | None, authorization: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    # Compared in constant time, as bytes (compare_digest refuses non-ASCII text).
    matches = hmac.compare_digest(given.strip().encode(), expected.get_secret_value().encode())
    if scheme.lower() != "bearer" or not matches:
        raise NotAuthenticated(
            "/metrics needs `Authorization: Bearer <RRMM_METRICS_TOKEN>`",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


class DatabaseCollector(Collector):
    """Business gauges, read with a few cheap queries at each scrape."""

    def __init__(
        self, session_factory: Callable[[], sessionmaker[Session] | None], settings: Settings
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the database: not described at registration

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "rrmm_metrics_database_up", "1 if the database answered this scrape's queries."
        )
        factory = self.session_factory()
        if factory is None:
            up.add_metric([], 0)
            return [up]
        try:
            with factory() as session:
                families = list(self._read(session))
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics_database_error", error=type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _read(self, session: Session) -> Iterable[Metric]:
        now = utcnow()
        deliveries = GaugeMetricFamily(
            "rrmm_deliveries",
            "Ledger rows by channel and status (all incidents).",
            labels=["channel", "status"],
        )
        rows = session.execute(
            select(DeliveryCounter.channel, DeliveryCounter.status, func.sum(DeliveryCounter.count))
            .group_by(DeliveryCounter.channel, DeliveryCounter.status)
            .order_by(DeliveryCounter.channel, DeliveryCounter.status)
        )
        for channel, status, count in rows:
            deliveries.add_metric([channel, status], float(count or 0))
        yield deliveries

        # Queue lag: how long the longest-waiting due row has waited (0 if none waits).
        waiting_since = session.scalar(
            select(func.min(func.coalesce(Delivery.next_attempt_at, Delivery.created_at))).where(
                Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
        )
        oldest = GaugeMetricFamily(
            "rrmm_delivery_oldest_due_age_seconds",
            "Seconds the oldest due pending or retrying delivery has waited to be sent.",
        )
        oldest.add_metric([], _age(now, waiting_since) or 0.0)
        yield oldest

        # From the counter rows the answers keep up to date (one per incident and response),
        # never from the answers themselves: a scrape costs the same at any volume.
        answers = GaugeMetricFamily(
            "rrmm_current_answers",
            "Members' current answers, by response, over all incidents.",
            labels=["response"],
        )
        for response, count in session.execute(
            select(AnswerCounter.response, func.sum(AnswerCounter.count))
            .group_by(AnswerCounter.response)
            .order_by(AnswerCounter.response)
        ):
            answers.add_metric([response], float(count or 0))
        yield answers

        yield from _fanout_histograms(session)

        incidents = GaugeMetricFamily("rrmm_incidents", "Incidents by status.", labels=["status"])
        by_status: dict[str, int] = dict.fromkeys(INCIDENT_STATUSES, 0)
        for status, count in session.execute(
            select(Incident.status, func.count()).group_by(Incident.status)
        ):
            by_status[status] = count
        for status, count in by_status.items():
            incidents.add_metric([status], float(count))
        yield incidents

        health = worker_health(
            session, interval_seconds=self.settings.heartbeat_interval_seconds, now=now
        )
        workers_up = GaugeMetricFamily(
            "rrmm_workers_up", "1 if a worker ran the heartbeat task within 3 intervals."
        )
        workers_up.add_metric([], 1.0 if health.state == "ok" else 0.0)
        yield workers_up
        if health.age_seconds is not None:
            heartbeat = GaugeMetricFamily(
                "rrmm_worker_last_heartbeat_age_seconds",
                "Seconds since a worker last ran the heartbeat task.",
            )
            heartbeat.add_metric([], health.age_seconds)
            yield heartbeat

        runs = CounterMetricFamily("rrmm_sweeper_runs", "Sweeps run by beat's sweeper.")
        runs.add_metric([], float(sweep_runs(session)))
        yield runs
        swept = _age(now, last_sweep(session))
        if swept is not None:
            sweep = GaugeMetricFamily(
                "rrmm_sweeper_last_run_age_seconds", "Seconds since the sweeper last ran."
            )
            sweep.add_metric([], swept)
            yield sweep


def _fanout_histograms(session: Session) -> Iterable[Metric]:
    """Delivery latency (from a briefing version's creation to each message leaving) and
    fan-out duration (first row queued to last row settled), summed over the fan-outs that
    have finished: each `fanout_finished` timeline event carries its own histogram, so a
    scrape reads one small row per briefing version, never the deliveries."""
    latency_buckets = [0] * len(timeline.LATENCY_BUCKETS)
    latency_sum = 0.0
    latency_count = 0
    durations: list[float] = []
    for (detail,) in session.execute(
        select(IncidentEvent.detail).where(IncidentEvent.kind == TimelineEventKind.FANOUT_FINISHED)
    ):
        for index, count in enumerate(detail.get("latency_buckets", [])[: len(latency_buckets)]):
            latency_buckets[index] += int(count)
        latency_sum += float(detail.get("latency_sum", 0.0))
        latency_count += int(detail.get("latency_count", 0))
        durations.append(float(detail.get("duration_seconds", 0.0)))
    latency = HistogramMetricFamily(
        "rrmm_delivery_latency_seconds",
        "Seconds from a briefing version's creation to each of its messages being sent "
        "(counted when its fan-out finishes).",
    )
    latency.add_metric(
        [],
        [
            (_bound(b), float(c))
            for b, c in zip(timeline.LATENCY_BUCKETS, latency_buckets, strict=True)
        ]
        + [("+Inf", float(latency_count))],
        latency_sum,
    )
    yield latency
    duration = HistogramMetricFamily(
        "rrmm_fanout_duration_seconds",
        "Seconds from a briefing version's first row queued to its last row settled.",
    )
    duration.add_metric(
        [],
        [(_bound(b), float(sum(d <= b for d in durations))) for b in FANOUT_BUCKETS]
        + [("+Inf", float(len(durations)))],
        sum(durations),
    )
    yield duration


def _bound(value: float) -> str:
    return repr(float(value))


def _age(now: datetime, then: datetime | None) -> float | None:
    if then is None:
        return None
    return float(max((now - then).total_seconds(), 0.0))


def install_metrics(app: FastAPI, state: AppState) -> Histogram:
    """The series of this app's own registry (several apps in one process do not share
    series) and the `/metrics` route. Returns the HTTP histogram, which the access log
    middleware (app/middleware.py) observes."""
    settings = state.settings
    registry = state.metrics_registry
    histogram = Histogram(
        "rrmm_http_request_duration_seconds",
        "HTTP request duration, by route template, method and status.",
        labelnames=("route", "method", "status"),
        buckets=HTTP_BUCKETS,
        registry=registry,
    )

    def session_factory() -> sessionmaker[Session] | None:
        return state.running.session_factory if state.running is not None else None

    registry.register(DatabaseCollector(session_factory, settings))
    if settings.metrics_token is None and settings.mode == "production":
        log.warning("metrics_unprotected", hint="set RRMM_METRICS_TOKEN")
    app.include_router(router)
    return histogram
