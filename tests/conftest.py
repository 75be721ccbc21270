"""Test fixtures: real databases and a real Redis, never mocks of our own stack.

With `RRMM_TEST_DATABASE_URL` (PostgreSQL) a fresh database is created for the run and
dropped after; without it, a SQLite file in a temporary directory. With
`RRMM_TEST_BROKER_URL` that Redis is used; without it, the bundled redis-server is started
on a private socket.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import migrate
from app.auth.service import create_key
from app.cli.supervisor import redis_answers, redis_server_argv
from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope
from app.main import create_app
from app.models import Base, Role
from app.principal import Principal
from tests.support.database import scratch_database
from tests.support.factories import TEST_SECRET_KEY
from tests.support.sinks import SmtpSink, WebhookReceiver, sinks


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server_url = os.environ.get("RRMM_TEST_DATABASE_URL")
    if not server_url:
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'rrmm.db'}"
        return
    with scratch_database(server_url, "rrmm_test") as url:
        yield url


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RRMM_TEST_BROKER_URL")
    if given:
        yield given
        return
    directory = tmp_path_factory.mktemp("redis")
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(redis_server_argv(socket_path, directory), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not redis_answers(socket_path):
        assert time.monotonic() < deadline, "the bundled redis-server did not start"
        time.sleep(0.05)
    try:
        yield f"redis+socket://{socket_path}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def settings(
    database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        mode="production",
        var_dir=tmp_path_factory.mktemp("var"),
        database_url=database_url,
        broker_url=broker_url,
        secret_key=TEST_SECRET_KEY,
        webhook_allow_private=False,
        log_format="json",
        # Tests read the status right after changing the database: no cached status here
        # (tests/incidents/test_status.py checks the cache with its own settings).
        status_cache_seconds=0,
        api_key_cache_seconds=0,
        # The two-person rule is tested on its own (tests/incidents/test_approval.py); the
        # rest of the suite declares severe incidents that go out at once.
        approval_severities=[],
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    migrate.upgrade(settings.database_url)
    engine = create_db_engine(settings.database_url)
    yield engine
    engine.dispose()


# Fixtures that start a real worker or a browser: a test that uses one is `slow` whether or
# not it says so (`make test-fast` leaves those out).
SLOW_FIXTURES = frozenset({"worker", "live_worker", "browser"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _clean_tables(request: pytest.FixtureRequest) -> None:
    """Each test starts from empty tables (only tests that use the database pay for it).

    Emptied, not rolled back: most tests here commit for real and are read by other
    processes and connections (the API's own engine behind TestClient, a Celery worker in a
    subprocess, `rrmm` commands, a second API for concurrency), none of which can see, or
    share, a transaction the test holds open. Deleting every row first is what works for
    all of them, on both backends.
    """
    if "engine" not in request.fixturenames:
        return
    engine: Engine = request.getfixturevalue("engine")
    for attempt in range(5):
        try:
            with engine.begin() as connection:
                for table in reversed(Base.metadata.sorted_tables):
                    connection.execute(delete(table))
            return
        except OperationalError as exc:
            # A worker that a module keeps running between its tests may be sweeping the
            # rows being deleted (PostgreSQL then breaks the deadlock by aborting one).
            if "deadlock" not in str(exc).lower() or attempt == 4:
                raise
            time.sleep(0.2)


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


@pytest.fixture
def db(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for assertions on what the API stored."""
    with session_factory() as session:
        yield session


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:  # noqa: ARG001 (requested for its effect: a migrated database)
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 must show up as a response a test can assert on.
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def client_factory(settings: Settings, engine: Engine) -> Iterator[ClientFactory]:  # noqa: ARG001 (requested for its effect: a migrated database)
    """Clients of apps built with the suite's settings, changed as asked
    (`client_factory(webhook_allow_private=True)`, or `client_factory(base=other_settings)`);
    every one is closed after the test."""
    with ExitStack() as stack:

        def make(base: Settings | None = None, **changes: Any) -> TestClient:
            built = (base or settings).model_copy(update=changes)
            # raise_server_exceptions=False: a 500 is a response a test can assert on.
            return stack.enter_context(TestClient(create_app(built), raise_server_exceptions=False))

        yield make


@pytest.fixture
def private_client(client_factory: ClientFactory) -> TestClient:
    """A client of an app that allows private webhook addresses (dev and test setting)."""
    return client_factory(webhook_allow_private=True)


@pytest.fixture
def api_keys(session_factory: sessionmaker[Session]) -> dict[Role, str]:
    keys = {}
    with session_scope(session_factory) as session:
        for role in Role:
            _key, plaintext = create_key(
                session, name=f"test-{role.value}", role=role, actor=Principal.cli()
            )
            keys[role] = plaintext
    return keys


@pytest.fixture
def auth(api_keys: dict[Role, str]) -> Callable[[Role], dict[str, str]]:
    def headers(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_keys[role]}"}

    return headers


@pytest.fixture
def operator(auth: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return auth(Role.OPERATOR)


@pytest.fixture
def admin(auth: Callable[[Role], dict[str, str]]) -> dict[str, str]:
    return auth(Role.ADMIN)


@pytest.fixture
def smtp_and_receiver() -> Iterator[tuple[SmtpSink, WebhookReceiver]]:
    """A real SMTP server and a signature-checking webhook receiver on 127.0.0.1."""
    yield from sinks()


@pytest.fixture
def smtp(smtp_and_receiver: tuple[SmtpSink, WebhookReceiver]) -> SmtpSink:
    return smtp_and_receiver[0]


@pytest.fixture
def receiver(smtp_and_receiver: tuple[SmtpSink, WebhookReceiver]) -> WebhookReceiver:
    return smtp_and_receiver[1]


@pytest.fixture
def tmp_var(tmp_path: Path) -> Path:
    return tmp_path / "var"
