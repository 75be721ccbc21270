"""CAP 1.2 export of an incident (operator: CAP carries the briefing text)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.cap.service import MEDIA_TYPE, cap_sender, export_alert
from app.deps import Operator, SessionDep, SettingsDep

router = APIRouter(prefix="/v1/incidents", tags=["incidents"])


@router.get(
    "/{incident_id}/cap",
    response_class=Response,
    responses={
        200: {
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
            "description": "An OASIS CAP 1.2 `<alert>` with one `<info>` per language.",
        }
    },
)
def incident_cap(
    incident_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    _operator: Operator,
    version: Annotated[
        int | None, Query(ge=1, description="A briefing version; the latest by default.")
    ] = None,
) -> Response:
    """The incident's latest briefing version (or `version`) as a CAP 1.2 alert.

    `msgType` is `Alert` for the declaration, `Update` for updates, reminders, escalations
    and the stand-down (`responseType` AllClear), `Cancel` for a cancellation; `references`
    lists every earlier version. `scope` is Restricted.
    """
    body = export_alert(
        session, incident_id, sender=cap_sender(settings.mail_from), version=version
    )
    return Response(body, media_type=MEDIA_TYPE)
