"""The one place where routers are mounted."""

from __future__ import annotations

from fastapi import FastAPI

from app.acks.router import pages as ack_pages
from app.acks.router import router as acks_router
from app.audit.router import router as audit_router
from app.board.router import pages as board_pages
from app.briefing_templates.router import router as templates_router
from app.cap.router import router as cap_router
from app.console.router import pages as console_pages
from app.health.router import router as health_router
from app.incidents.router import router as incidents_router
from app.members.router import router as members_router
from app.rosters.router import router as rosters_router

API_ROUTERS = (
    members_router,
    rosters_router,
    templates_router,
    incidents_router,
    acks_router,
    audit_router,
)


def mount_routers(app: FastAPI) -> None:
    app.include_router(health_router)
    app.include_router(ack_pages)
    app.include_router(board_pages)
    app.include_router(console_pages)
    for router in API_ROUTERS:
        app.include_router(router)
    app.include_router(cap_router)
