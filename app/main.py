"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from app.acks.ratelimit import RATE_LIMIT_STORAGE_ERRORS, RateLimiter
from app.api import mount_routers
from app.auth.cache import KeyCache
from app.broker import create_publisher
from app.clientaddr import ClientAddress
from app.config import Settings, get_settings
from app.db import create_session_factory, engine_from_settings
from app.deliveries.tokens import signer_from_settings
from app.errors import PROBLEM_JSON, Problem, install_error_handlers
from app.incidents.events import EventHub
from app.incidents.polls import StatusPolls
from app.incidents.schemas import EVENT_STREAM_MODELS
from app.incidents.status import StatusCache
from app.logging import configure_logging
from app.members.service import MemberPolicy
from app.metrics import install_metrics
from app.middleware import AccessLog, BodySizeLimit, ConcurrencyLimit
from app.security import SecretBox
from app.state import AppState, Running, set_app_state

DESCRIPTION = """
The Rapid Response Media Mechanism: rosters of the two networks (personalities and
editors), tension incidents, and the briefings fanned out to their members.

Every `/v1` route takes `Authorization: Bearer <api key>`. Errors are RFC 9457
`application/problem+json`; validation errors name each field and the reason.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. The engine is created in the lifespan, not at import time."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine = engine_from_settings(settings)
        session_factory = create_session_factory(engine)
        running = state.running = Running(
            engine=engine,
            session_factory=session_factory,
            publisher=create_publisher(settings),
            event_hub=EventHub(
                session_factory,
                settings.events_poll_seconds,
                max_streams_per_key=settings.events_max_streams_per_key,
                key_recheck_seconds=settings.events_key_recheck_seconds,
            ),
        )
        try:
            yield
        finally:
            await running.event_hub.close()
            running.publisher.close()
            engine.dispose()

    app = FastAPI(
        title="RRMM",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request;
        # the service's metrics are Prometheus and its traces are the logs' request ids.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    ack_signer = signer_from_settings(settings)
    state = AppState(
        settings=settings,
        member_policy=member_policy(settings),
        ack_signer=ack_signer,
        ack_limiter=RateLimiter(
            settings.ack_rate_limit,
            settings.ack_link_rate_limit,
            settings.rate_limit_storage,
            signer=ack_signer,
        ),
        status_cache=StatusCache(settings.status_cache_seconds),
        key_cache=KeyCache(settings.api_key_cache_seconds),
        metrics_registry=CollectorRegistry(auto_describe=True),
    )
    set_app_state(app, state)
    install_error_handlers(app)
    mount_routers(app)
    # Outermost last: the client address is resolved before anything reads it, the request
    # id exists before anything logs, and the body is read (within its deadline) before the
    # request may take an admission slot, so slow clients cannot hold the slots.
    app.add_middleware(
        ConcurrencyLimit,
        limit=settings.api_concurrency,
        timeout=settings.api_queue_timeout_seconds,
        exempt=frozenset({"/healthz"}),
    )
    # Outside admission: a poll answered from memory needs no slot (see its module).
    app.add_middleware(
        StatusPolls,
        keys=state.key_cache,
        statuses=state.status_cache,
    )
    app.add_middleware(
        BodySizeLimit,
        default_limit=settings.max_body_bytes,
        import_limit=settings.max_import_bytes,
        read_timeout=settings.body_read_timeout_seconds,
    )
    app.add_middleware(AccessLog, histogram=install_metrics(app, state))
    state.metrics_registry.register(RATE_LIMIT_STORAGE_ERRORS)
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    app.add_middleware(ClientAddress, trusted=settings.trusted_proxies)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def member_policy(settings: Settings) -> MemberPolicy:
    return MemberPolicy(
        allow_private_webhooks=settings.webhook_allow_private,
        secret_box=SecretBox.from_settings(settings),
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every 4xx of every route described as problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem_schema.pop("$defs", {}))
    components["Problem"] = problem_schema
    for model in EVENT_STREAM_MODELS:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    problem = {
        "description": "A problem (RFC 9457): the reason, and the invalid fields if any.",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path.startswith("/v1"):
                responses["4XX"] = problem
    app.openapi_schema = schema
    return schema
