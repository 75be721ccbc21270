"""Sweeps on schedule during a fan-out that keeps every send process busy: the sweeper
(`rrmm sweeper`, the consumer of beat's queue alone) runs them beside a send worker whose
only pool process is held in a batch by a receiver that does not answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.broker import SEND_QUEUE
from app.health.service import sweep_runs
from app.models import Role
from app.netutil import wait_until
from tests.support.factories import declare_body
from tests.support.sinks import WebhookReceiver
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow  # a real worker


def runs(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return sweep_runs(session)


@pytest.mark.usefixtures("purge_broker")
def test_sweeps_run_while_every_send_process_is_busy(
    fanout_client: Any,
    auth: Callable[[Role], dict[str, str]],
    worker_env: dict[str, str],
    add_member: Callable[..., dict[str, Any]],
    receiver: WebhookReceiver,
    session_factory: sessionmaker[Session],
) -> None:
    created = [add_member(email=False) for _ in range(3)]
    for member in created:
        receiver.route(member["hook_path"], script=["hold", 200])
        receiver.set_secret(member["hook_path"], member["webhook_secret"])
    # One member per batch: the pool's one process holds the first batch (the receiver
    # answers nothing), the other batches wait on the sends' queue behind it.
    env = {
        **worker_env,
        "RRMM_DELIVERY_BATCH_SIZE": "1",
        "RRMM_WEBHOOK_TIMEOUT_SECONDS": "120",
    }
    send = WorkerProcess(env, beat=False, concurrency=1, queues=SEND_QUEUE).start()
    sweeper = WorkerProcess(env, beat=True, sweeper=True).start()
    try:
        response = fanout_client.post(
            "/v1/incidents", json=declare_body(), headers=auth(Role.OPERATOR)
        )
        assert response.status_code == 202, response.text
        wait_until(lambda: len(receiver.hits) == 1, 60, "the first batch held in flight")
        before = runs(session_factory)
        # Every 0.5 s by the test clocks; the send process stays in its batch throughout.
        wait_until(lambda: runs(session_factory) >= before + 4, 30, "four sweeps while it is held")
        assert len(receiver.hits) == 1, "the held batch ended, or a second one started"
        assert send.process is not None
        assert send.process.poll() is None, "the send worker died"
    finally:
        receiver.released.set()
        sweeper.stop()
        send.stop()
