from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor_key_id: uuid.UUID | None
    actor: str
    action: str
    object_type: str
    object_id: str | None
    request_id: str | None
    details: dict[str, Any]
