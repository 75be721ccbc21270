"""Who is calling: what the audit trail and the services know of a caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.models import Role


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (for the audit trail), its name and its role, and the
    person when a person calls (the console): the two-person rule compares persons."""

    key_id: uuid.UUID | None
    name: str
    role: Role
    person_id: uuid.UUID | None = None

    @classmethod
    def cli(cls) -> Principal:
        return cls(key_id=None, name="cli", role=Role.ADMIN)
