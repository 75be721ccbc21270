from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection, Queue

from app.broker import BEAT_QUEUE, SEND_QUEUE
from app.config import Settings
from app.models import Role
from tests.support.factories import member_payload
from tests.support.sinks import SmtpSink, WebhookReceiver
from tests.support.worker import WorkerProcess, worker_environment


@pytest.fixture
def purge_broker(settings: Settings) -> None:
    """Drop messages a previous test left in the queue (their rows are gone anyway)."""
    with Connection(settings.broker_url) as connection:
        for queue in (SEND_QUEUE, BEAT_QUEUE):
            Queue(queue).bind(connection.default_channel).purge()


@pytest.fixture
def fanout_client(client_factory: Callable[..., TestClient]) -> TestClient:
    """The API, allowed to target webhooks on 127.0.0.1 (the test receivers)."""
    return client_factory(webhook_allow_private=True)


@pytest.fixture
def worker_env(settings: Settings, smtp: SmtpSink, tmp_path: Path) -> dict[str, str]:
    return worker_environment(settings, smtp_port=smtp.port, var_dir=tmp_path / "worker")


@pytest.fixture
def worker(worker_env: dict[str, str], purge_broker: None) -> Iterator[WorkerProcess]:  # noqa: ARG001 (requested for its effect: an empty broker)
    process = WorkerProcess(worker_env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def add_member(
    fanout_client: TestClient, auth: Callable[[Role], dict[str, str]], receiver: WebhookReceiver
) -> Callable[..., dict[str, Any]]:
    """Create a member whose webhook points at the receiver (its secret registered there)."""
    counter = iter(range(1_000_000))

    def create(*, webhook: bool = True, email: bool = True, **overrides: Any) -> dict[str, Any]:
        n = next(counter)
        path = f"/hooks/{n}"
        payload = member_payload(
            name=overrides.pop("name", f"Member {n}"),
            email=f"member{n}@example.org" if email else None,
            webhook_url=receiver.url(path) if webhook else None,
            quiet_hours=overrides.pop("quiet_hours", None),
            **overrides,
        )
        if payload.get("quiet_hours") is None:
            payload.pop("quiet_hours", None)
        response = fanout_client.post("/v1/members", json=payload, headers=auth(Role.OPERATOR))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        if webhook:
            receiver.set_secret(path, body["webhook_secret"])
        body["hook_path"] = path
        return body

    return create
