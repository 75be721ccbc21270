"""Who is calling: what the audit trail and the services know of a caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.models import Role


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (for the audit trail), its name and its role."""

    key_id: uuid.UUID | None
    name: str
    role: Role

    @classmethod
    def cli(cls) -> Principal:
        return cls(key_id=None, name="cli", role=Role.ADMIN)
