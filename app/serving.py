"""uvicorn's options, in one place: `rrmm api` and the tests' live server use the same."""

from __future__ import annotations

from typing import Any

from app.config import Settings

# An idle keep-alive connection is closed after this long (uvicorn's own default, stated so
# nobody raises it by accident: idle sockets are what a slow-client attack is made of).
KEEP_ALIVE_SECONDS = 5
# A request head larger than this is refused before the app sees it (uvicorn's h11 parser;
# httptools, when installed, applies its own fixed cap).
MAX_HEAD_BYTES = 64 * 1024
# Open event streams would hold a shutdown forever without a bound.
GRACEFUL_SHUTDOWN_SECONDS = 10


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`.

    Proxy headers are believed from `RRMM_TRUSTED_PROXIES` only (uvicorn would otherwise
    trust `X-Forwarded-For` from 127.0.0.1, i.e. from anything on the same host): the same
    list and the same rule as app/clientaddr.py. uvicorn has no deadline for a request
    body; `BodySizeLimit` (app/middleware.py) enforces `RRMM_BODY_READ_TIMEOUT_SECONDS`.
    """
    trusted = [str(network) for network in settings.trusted_proxies]
    return {
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "access_log": False,  # our own access log leaves out query strings and tokens
        "log_config": None,  # app/logging.py configures uvicorn's loggers (redacted)
    }
