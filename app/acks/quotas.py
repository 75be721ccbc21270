"""Coverage quotas: the segments of members they count, who is targeted and who answered
in each, and which are met."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app import counters
from app.members.service import json_array_has_language
from app.models import CurrentAck, Incident, IncidentTarget, Member, QuotaCounter


def in_segment(quota: dict[str, Any], network: str, country: str, languages: list[str]) -> bool:
    """Python twin of `segment_condition`, for counting one member at a time."""
    if quota.get("network") and network != quota["network"]:
        return False
    if quota.get("countries") and country not in quota["countries"]:
        return False
    wanted = quota.get("languages") or []
    return not wanted or any(
        have == lang or have.startswith(lang + "-") for lang in wanted for have in languages
    )


class Segment(NamedTuple):
    """Members sharing a network, country and language list: `members` of them."""

    network: str
    country: str
    languages: list[str]
    members: int


def count_quota_targets(session: Session, incident: Incident, segments: Sequence[Segment]) -> None:
    """Count newly targeted members into each quota's segment."""
    quotas = incident.followup.get("quotas", [])
    if not quotas or not segments:
        return
    counters.add(
        session,
        QuotaCounter,
        [
            {
                "incident_id": incident.id,
                "quota_index": index,
                "answered": 0,
                "targeted": sum(
                    s.members
                    for s in segments
                    if in_segment(quota, s.network, s.country, s.languages)
                ),
            }
            for index, quota in enumerate(quotas)
        ],
        keys=("incident_id", "quota_index"),
        sums=("targeted",),
    )


def segment_condition(session: Session, quota: dict[str, Any]) -> Any:
    """SQL for "this member belongs to the quota's segment"."""
    conditions = []
    if quota.get("network"):
        conditions.append(Member.network == quota["network"])
    if quota.get("countries"):
        conditions.append(Member.country.in_(quota["countries"]))
    if quota.get("languages"):
        conditions.append(
            or_(
                *(
                    json_array_has_language(session, Member.languages, lang)
                    for lang in quota["languages"]
                )
            )
        )
    return and_(*conditions) if conditions else Member.id.is_not(None)


@dataclass(frozen=True)
class QuotaProgress:
    index: int
    quota: dict[str, Any]
    answered: int
    targeted: int

    @property
    def met(self) -> bool:
        return self.answered >= int(self.quota["min"])


def quota_progress(session: Session, incident: Incident) -> list[QuotaProgress]:
    """For each quota: targeted members of the segment, and how many gave a counting answer."""
    progress = []
    for index, quota in enumerate(incident.followup.get("quotas", [])):
        segment = segment_condition(session, quota)
        targeted = session.scalar(
            select(func.count())
            .select_from(IncidentTarget)
            .join(Member, Member.id == IncidentTarget.member_id)
            .where(IncidentTarget.incident_id == incident.id, segment)
        )
        answered = session.scalar(
            select(func.count())
            .select_from(CurrentAck)
            .join(Member, Member.id == CurrentAck.member_id)
            .where(
                CurrentAck.incident_id == incident.id,
                CurrentAck.response.in_(quota["responses"]),
                segment,
            )
        )
        progress.append(QuotaProgress(index, quota, answered or 0, targeted or 0))
    return progress


def met_segments(session: Session, incident: Incident) -> Any | None:
    """SQL for "the member is in a segment whose quota is met" (None if no quota is met)."""
    met = [p.quota for p in quota_progress(session, incident) if p.met]
    if not met:
        return None
    return or_(*(segment_condition(session, quota) for quota in met))
