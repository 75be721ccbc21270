"""Validated field types shared by every schema (and by the CSV importer through them)."""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import Annotated, Literal

import langcodes
import pycountry
from pydantic import AfterValidator, AwareDatetime, StringConstraints, WithJsonSchema

Network = Literal["personalities", "editors"]

# The seven common priorities of the founding memorandum (see DESIGN.md).
Theme = Literal[
    "religious-hatred",
    "cultural-diversity",
    "citizenship",
    "intercultural-dialogue",
    "human-rights-education",
    "human-contacts",
    "social-cohesion",
]
THEMES: tuple[str, ...] = Theme.__args__  # type: ignore[attr-defined]

ConsentMethod = Literal["written", "email", "online-form", "verbal", "contract"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_characters(value: str) -> str:
    # NUL cannot be stored by PostgreSQL, and CR/LF must never reach a mail header.
    if _CONTROL_OR_NEWLINE.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value


def _no_control_characters_except_newlines(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


Line = Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_control_characters)]
"""A one-line text: no control characters at all (safe for mail headers and PostgreSQL)."""

Name = Annotated[Line, StringConstraints(min_length=1), AfterValidator(_not_blank)]

Text = Annotated[
    str, StringConstraints(max_length=5000), AfterValidator(_no_control_characters_except_newlines)
]
"""Free text: line breaks allowed, other control characters refused."""


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    return frozenset(country.alpha_2 for country in pycountry.countries)


def _country(value: str) -> str:
    code = value.strip().upper()
    if code not in _countries():
        raise ValueError("not an ISO 3166-1 alpha-2 country code")
    return code


CountryCode = Annotated[
    str, StringConstraints(min_length=2, max_length=2), AfterValidator(_country)
]


def _language(value: str) -> str:
    if _CONTROL_OR_NEWLINE.search(value) or not langcodes.tag_is_valid(value):
        raise ValueError("not a valid BCP 47 language tag")
    return langcodes.standardize_tag(value)


LanguageTag = Annotated[
    str, StringConstraints(min_length=2, max_length=35), AfterValidator(_language)
]

_TAG = re.compile(r"[a-z0-9][a-z0-9_.:-]*")


def _tag(value: str) -> str:
    tag = value.strip().lower()
    if not _TAG.fullmatch(tag):
        raise ValueError("a tag is lowercase letters, digits and - _ . : (e.g. maghreb, tv)")
    return tag


Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_tag)]


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(value: str) -> str:
    if value not in _timezones():
        raise ValueError("not an IANA time zone name (e.g. Africa/Cairo)")
    return value


TimeZoneName = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]


def _naive_time(value: time) -> time:
    if value.tzinfo is not None:
        raise ValueError("a local time, without an offset (e.g. 22:00)")
    return value


LocalTime = Annotated[
    time,
    AfterValidator(_naive_time),
    # Not `format: time`: JSON Schema's time carries an offset, and ours never does.
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$",
            "examples": ["22:00"],
        }
    ),
]
"""A wall-clock time in the member's own time zone (quiet hours)."""


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range once converted to UTC") from exc


UTCDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timestamp with an offset, stored and returned in UTC."""
