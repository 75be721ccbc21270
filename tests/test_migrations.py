"""Migrations build the schema the models describe, and step down and up again.

Each test gets a fresh, empty database: a SQLite file, and a new PostgreSQL database when
`RRMM_TEST_DATABASE_URL` is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app import migrate
from app.db import create_db_engine
from app.models import Base

MODEL_TABLES = set(Base.metadata.tables)
# PostgreSQL is exercised whenever the run has one (CI always does).
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("RRMM_TEST_DATABASE_URL") else [])


@pytest.fixture(params=BACKENDS)
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = make_url(os.environ["RRMM_TEST_DATABASE_URL"])
    name = f"rrmm_migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def table_names(database_url: str) -> set[str]:
    engine = create_db_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_differences(database_url: str) -> list[object]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def head_revision() -> tuple[str, str | None]:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    head = script.get_revision("head")
    assert head is not None
    down = head.down_revision
    assert down is None or isinstance(down, str), "a merge head needs its own test"
    return head.revision, down


def test_there_is_one_head():
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))

    assert len(script.get_heads()) == 1


def test_upgrade_creates_every_table(fresh_database_url):
    assert table_names(fresh_database_url) == set()

    migrate.upgrade(fresh_database_url)

    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}
    assert migrate.current_heads(fresh_database_url) == {head_revision()[0]}


def test_upgrade_is_a_no_op_when_at_head(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    migrate.upgrade(fresh_database_url)

    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}


def test_models_match_the_migrations(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    assert schema_differences(fresh_database_url) == []


def test_downgrade_one_step_then_upgrade_again(fresh_database_url):
    head, previous = head_revision()
    migrate.upgrade(fresh_database_url)

    migrate.downgrade(fresh_database_url, "-1")

    assert migrate.current_heads(fresh_database_url) == ({previous} if previous else set())
    if previous is None:
        assert table_names(fresh_database_url) & MODEL_TABLES == set()

    migrate.upgrade(fresh_database_url)

    assert migrate.current_heads(fresh_database_url) == {head}
    assert table_names(fresh_database_url) == MODEL_TABLES | {"alembic_version"}
    assert schema_differences(fresh_database_url) == []


def test_downgrade_to_base_removes_every_table(fresh_database_url):
    migrate.upgrade(fresh_database_url)

    migrate.downgrade(fresh_database_url, "base")

    assert table_names(fresh_database_url) & MODEL_TABLES == set()
    assert migrate.current_heads(fresh_database_url) == set()


def test_upgrade_keeps_rows_of_a_database_at_head(fresh_database_url):
    """Running the migrations at start-up (as `rrmm run` does) must not touch the data."""
    migrate.upgrade(fresh_database_url)
    engine = create_db_engine(fresh_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO worker_heartbeats (worker, last_seen_at) VALUES (:w, :at)"),
                {"w": "celery@test", "at": "2026-01-01 00:00:00+00:00"},
            )
        migrate.upgrade(fresh_database_url)
        with engine.connect() as connection:
            workers = connection.execute(text("SELECT worker FROM worker_heartbeats")).all()
    finally:
        engine.dispose()

    assert [tuple(row) for row in workers] == [("celery@test",)]
