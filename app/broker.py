"""The broker, as the app and the workers both see it: the task and queue names, the
Celery configuration built from `Settings`, and the API's publisher. The app publishes
through this module and never imports `workers`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from celery import Celery
from kombu import Exchange, Queue

from app.config import Settings

log = structlog.get_logger(__name__)


# Above any task's run time: a task held longer than this is handed to another worker.
VISIBILITY_TIMEOUT_SECONDS = 3600


SEND_TASK = "rrmm.send_deliveries"


SEND_QUEUE = "rrmm"


BEAT_QUEUE = "rrmm.beat"


DISPATCH_TASK = "rrmm.dispatch_briefing"


NOTICES_TASK = "rrmm.send_operator_notices"
SWEEP_TASK = "rrmm.sweep"
HEARTBEAT_TASK = "rrmm.heartbeat"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings that matter for durability (see ECOSYSTEM.md): the database is the ledger,
    the broker only a doorbell, so no result backend and late acknowledgement."""
    heartbeat_interval = timedelta(seconds=settings.heartbeat_interval_seconds)
    sweep_interval = timedelta(seconds=settings.sweep_interval_seconds)
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        # Above a batch's own deadline: a batch stops itself and records what it did first.
        "task_soft_time_limit": settings.delivery_batch_deadline_seconds + 30,
        "task_time_limit": settings.delivery_batch_deadline_seconds + 60,
        "task_default_queue": SEND_QUEUE,
        # Beat's tasks have their own queue: behind a fan-out's hundreds of batches in one
        # queue they would expire before a worker reached them, and lease recovery with
        # them. Every worker consumes both queues.
        # Each queue with its own exchange and key: with the defaults both would be bound
        # to the default key, and every message would land in both.
        "task_queues": tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (SEND_QUEUE, BEAT_QUEUE)
        ),
        "task_routes": {
            SWEEP_TASK: {"queue": BEAT_QUEUE},
            HEARTBEAT_TASK: {"queue": BEAT_QUEUE},
            NOTICES_TASK: {"queue": BEAT_QUEUE},
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
        "beat_schedule": {
            "heartbeat": {
                "task": HEARTBEAT_TASK,
                "schedule": heartbeat_interval,
                "options": {"expires": heartbeat_interval.total_seconds()},
            },
            "operator-notices": {
                "task": NOTICES_TASK,
                "schedule": sweep_interval,
                "options": {"expires": sweep_interval.total_seconds()},
            },
            "sweep": {
                "task": SWEEP_TASK,
                "schedule": sweep_interval,
                # A sweep that waited longer than its period is replaced by the next one.
                "options": {"expires": sweep_interval.total_seconds()},
            },
        },
    }


def create_publisher(settings: Settings, name: str = "rrmm-api") -> Celery:
    """A Celery app that only publishes (the API). It gives up on an unreachable broker
    within about a second instead of retrying: the rows are in the ledger already and the
    sweeper starts them once the broker is back, so the operator need not wait."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(
        broker_connection_timeout=1,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        broker_transport_options={
            **app.conf.broker_transport_options,
            "socket_connect_timeout": 1,
            "socket_timeout": 2,
            "retry_on_timeout": False,
            "max_retries": 0,
        },
    )
    return app


def api_dispatcher(publisher: Celery) -> Callable[[int], None]:
    """Publishes the dispatch task after commit. If the broker is down the declaration still
    stands: the rows are in the ledger and the sweeper starts them once it is back."""

    def dispatch(briefing_id: int) -> None:
        try:
            publisher.send_task(DISPATCH_TASK, args=(briefing_id,), retry=False)
        except Exception as exc:  # any broker failure: the sweeper will pick the rows up
            log.warning("dispatch_not_published", briefing_id=briefing_id, error=type(exc).__name__)

    return dispatch
