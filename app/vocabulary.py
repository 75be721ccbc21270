"""The words the system's states are spelled with, once.

Each is a `StrEnum`: its members are the strings stored in the database and sent in the API,
so `row.status == DeliveryStatus.SENT` holds for a value read back as a plain string, and
the OpenAPI document lists each vocabulary as an enum the board and the benchmarks read.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """A ledger row's state: open while it may still be sent, final once it never will."""

    # The open states first, then the final ones: the order the board lists them in.
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


OPEN_DELIVERY_STATUSES = frozenset(
    {DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING}
)


class IncidentStatus(StrEnum):
    """An incident's lifecycle: pending approval (two-person rule), mobilizing while its
    first deliveries go out, active, and one of four ends."""

    PENDING_APPROVAL = "pending_approval"
    MOBILIZING = "mobilizing"
    ACTIVE = "active"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"


ENDED_INCIDENT_STATUSES = frozenset(
    {
        IncidentStatus.RESOLVED,
        IncidentStatus.CANCELLED,
        IncidentStatus.REJECTED,
        IncidentStatus.EXPIRED,
    }
)


class MemberStatus(StrEnum):
    """Whether a member is briefed: a paused member is kept but never targeted."""

    ACTIVE = "active"
    PAUSED = "paused"


class Channel(StrEnum):
    """How a briefing reaches a member."""

    EMAIL = "email"
    WEBHOOK = "webhook"


class BriefingKind(StrEnum):
    """Why a briefing version was written."""

    DECLARED = "declared"
    UPDATED = "updated"
    REMINDER = "reminder"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


class TimerKind(StrEnum):
    """A follow-up timer of an incident (durable rows fired by the sweeper)."""

    REMINDER = "reminder"
    ESCALATION = "escalation"
    DEADLINE = "deadline"


class TimelineEventKind(StrEnum):
    """A step on an incident's timeline, in the order an incident usually goes through them."""

    APPROVAL_REQUESTED = "approval_requested"  # a declaration waits for a second principal
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DECLARED = "declared"
    TARGETED = "targeted"  # a declared or updated version's targets and rows are all written
    ACTIVATED = "activated"  # every first delivery due has had its first attempt
    FANOUT_STARTED = "fanout_started"
    FANOUT_FINISHED = "fanout_finished"
    UPDATED = "updated"
    REMINDER = "reminder"
    ESCALATION = "escalation"
    QUOTA_MET = "quota_met"
    QUOTA_UNMET = "quota_unmet"
    DEADLINE = "deadline"
    OPERATORS_NOTIFIED = "operators_notified"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
