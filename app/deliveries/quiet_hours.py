"""Quiet hours: a member's local night, when only urgent briefings go out."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Severities that wait for the end of quiet hours; `severe` and `extreme` go through at once.
DEFERRABLE_SEVERITIES = frozenset({"minor", "moderate"})


def quiet_until(now: datetime, timezone: str, start: time | None, end: time | None) -> datetime:
    """When the member's quiet hours end (UTC), or `now` if they are not in them.

    `start` after `end` spans midnight (22:00 → 07:00).
    """
    if start is None or end is None:
        return now
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    moment = local.time().replace(tzinfo=None)
    if start < end:
        quiet = start <= moment < end
        end_date = local.date()
    else:
        quiet = moment >= start or moment < end
        end_date = local.date() + timedelta(days=1) if moment >= start else local.date()
    if not quiet:
        return now
    return datetime.combine(end_date, end, tzinfo=zone).astimezone(UTC)


def first_attempt_at(
    now: datetime, severity: str, timezone: str, start: time | None, end: time | None
) -> datetime | None:
    """`None` (send now) unless the severity can wait and the member is in quiet hours."""
    if severity not in DEFERRABLE_SEVERITIES:
        return None
    until = quiet_until(now, timezone, start, end)
    return None if until <= now else until
