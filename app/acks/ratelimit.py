"""Rate limits for the routes a token alone opens (the ack page and `POST /v1/acks`).

Two budgets, so that nobody's flood blocks somebody else's answer:

- a valid token (one member's link) has its own budget, `RRMM_ACK_LINK_RATE_LIMIT`,
  wherever it comes from: a newsroom system answering for 300 members from one address
  spends 300 budgets, not one, and is never throttled as one person;
- a token that does not verify (a guess, an expired or mangled link, junk) is counted
  against the client address, `RRMM_ACK_RATE_LIMIT`: a flood of junk is refused for
  its sender only, and a valid token from the same address still gets through.

The client address is app/clientaddr.py's (behind a proxy only if the proxy is trusted).
If the storage (Redis) cannot be reached, requests are let through, with a warning and
`rrmm_rate_limit_storage_errors_total`: an outage of the limiter must not become an outage
of the answers.
"""

from __future__ import annotations

import time

import structlog
from fastapi import Request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from app.clientaddr import client_address
from app.deliveries.tokens import AckTokenSigner, InvalidToken
from app.errors import AppError

log = structlog.get_logger(__name__)

# Counted in the process (by the ack routes' limiter and the console's), registered into
# each app's registry by create_app (app/main.py).
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "rrmm_rate_limit_storage_errors_total",
    "Rate-limit checks let through because the limiter's storage could not be reached.",
    registry=None,
)

# A limiter check waits at most this long for Redis before letting the request through.
STORAGE_TIMEOUT_SECONDS = 0.5
# While the storage is down, one warning per this many seconds (the counter counts all).
WARNING_INTERVAL_SECONDS = 60.0


class TooManyRequests(AppError):
    status = 429
    title = "Too many requests"


class RateLimiter:
    """A moving window per valid token and per client address for invalid ones: memory in
    one process, Redis across several (`RRMM_RATE_LIMIT_STORAGE=redis://…`)."""

    def __init__(
        self, per_address: str, per_token: str, storage_url: str, *, signer: AckTokenSigner
    ) -> None:
        self.per_address = parse(per_address)
        self.per_token = parse(per_token)
        self.signer = signer
        options: dict[str, float] = {}
        if storage_url.startswith(("redis", "rediss")):
            options = {
                "socket_timeout": STORAGE_TIMEOUT_SECONDS,
                "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            }
        storage = storage_from_string(storage_url, wrap_exceptions=True, **options)
        self.limiter = MovingWindowRateLimiter(storage)
        self._warned_at = float("-inf")

    def check(self, request: Request, scope: str, token: str) -> None:
        """Count this use of `token` on route `scope`; 429 with Retry-After when over."""
        try:
            claims = self.signer.verify(token)
        except InvalidToken:
            self._hit(
                self.per_address,
                (scope, "address", client_address(request.scope)),
                "too many invalid links from this address; try again later",
            )
        else:
            self._hit(
                self.per_token,
                (scope, "token", str(claims.delivery_id)),
                "this link was used too often; try again later",
            )

    def _hit(self, rate: RateLimitItem, key: tuple[str, ...], detail: str) -> None:
        try:
            allowed = self.limiter.hit(rate, *key)
            reset = 0.0 if allowed else self.limiter.get_window_stats(rate, *key).reset_time
        except StorageError as exc:
            RATE_LIMIT_STORAGE_ERRORS.inc()
            now = time.monotonic()
            if now - self._warned_at >= WARNING_INTERVAL_SECONDS:
                self._warned_at = now
                log.warning(
                    "rate_limit_storage_unavailable",
                    error=type(exc.storage_error).__name__,
                    action="requests let through unlimited until it answers",
                )
            return
        if not allowed:
            retry_after = max(1, int(reset - time.time()) + 1)
            raise TooManyRequests(detail, headers={"Retry-After": str(retry_after)})
