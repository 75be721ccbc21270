"""The worker's event loop as `RRMM_WORKER_EVENT_LOOP` chooses it."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from app.deliveries.service import event_loop_factory


def test_asyncio_is_the_default_loop_and_uvloop_one_setting_away() -> None:
    assert event_loop_factory("asyncio") is None
    for choice in ("uvloop", "auto"):
        factory = event_loop_factory(choice)
        assert factory is not None
        with asyncio.Runner(loop_factory=factory) as runner:
            assert isinstance(runner.get_loop(), uvloop.Loop)
            assert runner.run(asyncio.sleep(0, result=7)) == 7


def test_the_setting_refuses_an_unknown_loop() -> None:
    from pydantic import ValidationError

    from app.config import Settings

    with pytest.raises(ValidationError, match="worker_event_loop"):
        Settings(worker_event_loop="trio")
    assert Settings().worker_event_loop == "asyncio"
