"""The one pagination: `page()` over `limit + 1` rows, and the `limit`/`cursor` parameters
every list route shares (as documented)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.errors import InvalidInput
from app.main import create_app
from app.pagination import PageParams, decode_int_cursor, encode_cursor, page

LIST_ROUTES = {
    "/v1/members": 50,
    "/v1/rosters": 50,
    "/v1/rosters/{roster_id}/members": 50,
    "/v1/templates": 50,
    "/v1/incidents": 50,
    "/v1/incidents/{incident_id}/deliveries": 50,
    "/v1/incidents/{incident_id}/acks": 50,
    "/v1/audit": 50,
    "/v1/incidents/{incident_id}/timeline": 500,
}


def test_a_full_page_has_the_cursor_of_its_last_row():
    rows = [{"id": n} for n in range(1, 5)]  # limit + 1 rows fetched: there is more

    result = page(rows, 3, key=lambda r: r["id"], view=lambda items: [r["id"] * 10 for r in items])

    assert result.items == [10, 20, 30]
    assert result.next_cursor is not None
    assert decode_int_cursor(result.next_cursor) == 3


@pytest.mark.parametrize("count", [0, 2, 3])
def test_the_last_page_has_no_cursor(count):
    rows = list(range(1, count + 1))
    seen: list[list[int]] = []

    def view(items: Any) -> list[int]:
        seen.append(list(items))
        return list(items)

    result = page(rows, 3, key=lambda r: r, view=view)

    assert result.items == rows
    assert result.next_cursor is None
    assert seen == [rows]  # the view sees the page only, once


def test_page_params_decode_their_cursor_by_key_kind():
    key = uuid.uuid4()

    assert PageParams(limit=5, cursor=None).after_uuid() is None
    assert PageParams(limit=5, cursor=encode_cursor(str(key))).after_uuid() == key
    assert PageParams(limit=5, cursor=encode_cursor(7)).after_int() == 7
    with pytest.raises(InvalidInput):
        PageParams(limit=5, cursor=encode_cursor(str(key))).after_int()


def test_every_list_route_documents_the_same_limit_and_cursor():
    document = create_app().openapi()
    paged = {
        path
        for path, operations in document["paths"].items()
        if "get" in operations
        and operations["get"]["responses"]["200"]["content"]
        .get("application/json", {})
        .get("schema", {})
        .get("$ref", "")
        .startswith("#/components/schemas/Page_")
    }
    assert paged == set(LIST_ROUTES)

    for path, default in LIST_ROUTES.items():
        parameters = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        limit = parameters["limit"]
        cursor = parameters["cursor"]
        assert (limit["in"], limit["required"]) == ("query", False), path
        assert limit["schema"] == {
            "type": "integer",
            "minimum": 1,
            "maximum": 500,
            "default": default,
            "title": "Limit",
        }, path
        assert (cursor["in"], cursor["required"]) == ("query", False), path
        assert cursor["schema"]["anyOf"][0] == {"type": "string", "maxLength": 200}, path
