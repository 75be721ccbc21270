"""The Celery application, configured from `Settings` when first used (not at import)."""

from __future__ import annotations

import gc
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from kombu import Exchange, Queue

from app.config import Settings, get_settings

# Above any task's run time: a task held longer than this is handed to another worker.
VISIBILITY_TIMEOUT_SECONDS = 3600
SEND_TASK = "rrmm.send_deliveries"
SEND_QUEUE = "rrmm"
BEAT_QUEUE = "rrmm.beat"
DISPATCH_TASK = "rrmm.dispatch_briefing"
NOTICES_TASK = "rrmm.send_operator_notices"


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
            "rrmm.sweep": {"queue": BEAT_QUEUE},
            "rrmm.heartbeat": {"queue": BEAT_QUEUE},
            NOTICES_TASK: {"queue": BEAT_QUEUE},
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
        "beat_schedule": {
            "heartbeat": {
                "task": "rrmm.heartbeat",
                "schedule": heartbeat_interval,
                "options": {"expires": heartbeat_interval.total_seconds()},
            },
            "operator-notices": {
                "task": NOTICES_TASK,
                "schedule": sweep_interval,
                "options": {"expires": sweep_interval.total_seconds()},
            },
            "sweep": {
                "task": "rrmm.sweep",
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


celery_app = Celery("rrmm", include=["workers.tasks"])


@celery_app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_settings()))


@worker_init.connect
def _freeze_heap(**_: Any) -> None:
    # Before the pool forks: what the main process has built (modules, settings, the app)
    # lives as long as the worker, so the garbage collector stops scanning it in every
    # child (~0.14 ms per delivery measured, ECOSYSTEM.md) and the children no longer
    # touch, and so copy, the pages it is on.
    gc.collect()
    gc.freeze()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    from app.deliveries.service import forget_transports
    from workers import tasks

    tasks.reset_session_factory()
    forget_transports()
