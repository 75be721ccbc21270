"""structlog set-up: JSON in production, readable in a terminal; secrets never printed."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

# Keys whose values are never written to a log line, whoever passes them.
REDACTED_KEYS = frozenset(
    {
        "email",
        "webhook_url",
        "webhook_secret",
        "secret",
        "secret_key",
        "token",
        "api_key",
        "authorization",
        "password",
        "key",
    }
)


# Secrets that can hide inside free text (a traceback, an exception's message, a line from
# uvicorn): the ack page's path, anything shaped like an ack token or an API key, and the
# parameters SQLAlchemy would print after a failed statement.
_SCRUBS = (
    (re.compile(r"/ack/[^\s\"'?#/<>]+"), "/ack/{token}"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{42}(?![A-Za-z0-9_-])"), "[token]"),
    (re.compile(r"rrmm_[A-Za-z0-9_-]{16,}"), "[api key]"),
    (re.compile(r"\[parameters: [^\n]*"), "[parameters: redacted]"),
)
# uvicorn's loggers, sent through the same processors as ours.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


def scrub_text(text: str) -> str:
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def scrub(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Free-text values (the event, a rendered traceback) lose tokens, keys and paths."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = scrub_text(value)
    return event_dict


class _CurrentStderr(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time (tests and daemons replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    renderer: Any
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Look up sys.stderr at each call, not once: it may be replaced (tests, daemons).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_server_logs(renderer, numeric_level)


def _route_server_logs(renderer: Any, level: int) -> None:
    """uvicorn logs with the standard library ("Exception in ASGI application" and its
    traceback among others): its records get the same redaction and rendering as ours."""
    handler = _CurrentStderr()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                structlog.processors.format_exc_info,
                scrub,
                renderer,
            ],
        )
    )
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        # Replace, not add: create_app (and so this) runs once per app, several in tests.
        server_logger.handlers = [handler] if name == "uvicorn" else []
        server_logger.propagate = name != "uvicorn"
        server_logger.setLevel(level)
    # uvicorn's access lines carry the raw path, the query string and the peer address: our
    # own access log (app/middleware.py) replaces them.
    access = logging.getLogger("uvicorn.access")
    access.handlers = [logging.NullHandler()]
    access.propagate = False
