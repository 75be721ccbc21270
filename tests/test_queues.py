"""The broker's queues, on the real Redis: each task lands in its own queue, once."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Connection, Queue

from app.broker import BEAT_QUEUE, SEND_QUEUE, SEND_TASK, celery_config
from app.config import Settings


def depth(connection: Any, name: str) -> int:
    declared: Any = Queue(name).bind(connection.default_channel).queue_declare(passive=True)
    return int(declared.message_count)


def test_send_tasks_and_beat_tasks_each_land_in_their_own_queue_once(settings: Settings):
    app = Celery("queue-test", set_as_current=False)
    app.conf.update(celery_config(settings))
    with Connection(settings.broker_url) as connection:
        # As a worker does when it starts: every queue it consumes, with its binding.
        for queue in app.amqp.queues.values():
            queue.bind(connection.default_channel).declare()
        for name in (SEND_QUEUE, BEAT_QUEUE):
            Queue(name).bind(connection.default_channel).purge()
        app.send_task(SEND_TASK, args=([1, 2],), connection=connection)
        app.send_task("rrmm.sweep", connection=connection)
        app.send_task("rrmm.heartbeat", connection=connection)
        sizes = {name: depth(connection, name) for name in (SEND_QUEUE, BEAT_QUEUE)}
        for name in (SEND_QUEUE, BEAT_QUEUE):
            Queue(name).bind(connection.default_channel).purge()
    app.close()
    assert sizes == {SEND_QUEUE: 1, BEAT_QUEUE: 2}


def test_the_cli_consumes_the_queues_the_tasks_are_routed_to(settings: Settings) -> None:
    """`rrmm worker` consumes both queues unless told otherwise, and `rrmm sweeper` beat's
    alone (the CLI names them without importing Celery)."""
    import inspect

    from app.cli import main

    default = inspect.signature(main.worker).parameters["queues"].default
    assert default == f"{SEND_QUEUE},{BEAT_QUEUE}"
    routes: dict[str, dict[str, str]] = celery_config(settings)["task_routes"]
    assert {route["queue"] for route in routes.values()} == {BEAT_QUEUE}
