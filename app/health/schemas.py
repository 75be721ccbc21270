from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Liveness(BaseModel):
    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    database: str = Field(description="`ok`, or `unreachable (<error type>)`.")
    broker: str = Field(description="`ok`, or `unreachable (<error type>)`.")
    workers: str = Field(
        description="`ok` (a worker ran the heartbeat task within 3 intervals), `stale`, "
        "`none`, or `unknown (<error type>)`."
    )


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: ReadinessChecks
