"""Rate limits for the routes a token alone opens (the ack page and `POST /v1/acks`)."""

from __future__ import annotations

import time

from fastapi import Request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.errors import AppError


class TooManyRequests(AppError):
    status = 429
    title = "Too many requests"


class RateLimiter:
    """A moving window per client address: memory in one process, Redis across several
    (`RRMM_RATE_LIMIT_STORAGE=redis://…`)."""

    def __init__(self, rate: str, storage_url: str) -> None:
        self.rate = parse(rate)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_url))

    def check(self, request: Request, scope: str) -> None:
        client = request.client.host if request.client else "unknown"
        if not self.limiter.hit(self.rate, scope, client):
            reset, _remaining = self.limiter.get_window_stats(self.rate, scope, client)
            retry_after = max(1, int(reset - time.time()) + 1)
            raise TooManyRequests(
                "too many requests from this address; try again later",
                headers={"Retry-After": str(retry_after)},
            )
