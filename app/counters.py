"""Counter rows moved by deltas in the writer's transaction: upserts that add, so two
concurrent writers both count, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def add(
    session: Session,
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    sums: Sequence[str],
    latest: Sequence[str] = (),
) -> None:
    """Insert each row, or add its `sums` columns to the existing row (and overwrite its
    `latest` columns, e.g. a last-change time). Rows are applied sorted by key, so
    concurrent transactions lock counter rows in the same order (no deadlock)."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(model)
    set_ = {c: getattr(model, c) + statement.excluded[c] for c in sums}
    set_.update({c: statement.excluded[c] for c in latest})
    statement = statement.on_conflict_do_update(index_elements=list(keys), set_=set_)
    session.execute(statement, sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys)))
