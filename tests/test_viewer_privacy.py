"""A viewer (a dashboard key) never sees a contact detail, a member name, a comment or
briefing text, on any route it can reach.

One realistic incident is seeded through the API with an operator key (members with Arabic
and French names, emails, webhooks, rosters, a briefing in en/ar/fr, an update, answers with
comments through the ack page and `POST /v1/acks`, quotas, a reminder and an escalation),
next to an exercise that was resolved with a stand-down of its own. Sends are moved through
the ledger's own `transition` (as the status tests do); tokens are minted by the app's signer
for real delivery ids.

The routes come from `tests.test_roles` (every `Role.VIEWER` entry of `EXPECTED`, the
`PUBLIC` ones and the status board's); `test_every_viewer_route_is_exercised` fails when the
app grows a route a viewer can reach that this file does not call. The event stream is the
one exception: it never ends, and tests/incidents/test_events.py reads it.

The incident's title and reference are *not* secret: the README lists `GET /v1/incidents`
for viewers as "incidents (no briefing text, no contact details)", its `q` searches the
title, and DESIGN.md's "briefing text" is the briefing's subject, body and talking points.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, quote_plus

import markupsafe
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.deliveries.tokens import AckTokenSigner
from app.incidents import followup
from app.models import Briefing, Delivery, Role
from app.models import Person as PersonRow
from app.models.base import utcnow
from app.people import service as people
from app.principal import Principal
from app.state import app_state
from app.vocabulary import DeliveryStatus
from tests import test_roles
from tests.acks.conftest import HttpResponse, encode_token, token_bytes
from tests.incidents.test_status import move
from tests.support.factories import assert_problem, member_payload
from tests.test_roles import (
    ACK_PAGE,
    EXPECTED,
    PUBLIC,
    TOKEN_AUTHENTICATED,
    Route,
    app_routes,
    required_roles,
)
from tests.test_roles import request_kwargs as role_test_request

Headers = dict[str, str]


# An endless server-sent event stream: tests/incidents/test_events.py reads it on its own.
SSE_ROUTE: Route = ("GET", "/v1/incidents/{incident_id}/events")

VIEWER_ROUTES: list[Route] = sorted(
    route for route, role in EXPECTED.items() if role is Role.VIEWER and route != SSE_ROUTE
)
# The status board's shell and assets: public and the same bytes for every incident (once
# tests/test_roles names them; the board is younger than this file's first version).
BOARD_PAGE: set[Route] = getattr(test_roles, "BOARD_PAGE", set())
# The console's pages open with a person's session, not a key: a viewer person's view is
# checked on its own below (test_a_viewer_person_sees_nothing_private_in_the_console).
CONSOLE_PAGE: set[Route] = getattr(test_roles, "CONSOLE_PAGE", set())
EXERCISED: list[Route] = VIEWER_ROUTES + sorted(PUBLIC | BOARD_PAGE)
# Routes a viewer key may not call: they must say so (403) and nothing else.
FORBIDDEN: list[Route] = sorted(
    route for route, role in EXPECTED.items() if not Role.VIEWER.includes(role)
)

# Query strings that change what a viewer route returns; a route not named here is called
# without one (a new route that needs one fails with its 422 until it is added here).
QUERIES: dict[Route, list[dict[str, str]]] = {
    ("GET", "/v1/incidents"): [
        {},
        *({"status": s} for s in ("mobilizing", "active", "resolved", "cancelled")),
        *({"mode": m} for m in ("actual", "exercise")),
        *({"severity": s} for s in ("minor", "moderate", "severe", "extreme")),
        {"q": "oasis"},
        {"q": "RRMM-"},
        {"limit": "1"},
    ],
    ("GET", "/v1/incidents/{incident_id}/coverage"): [
        {"by": by} for by in ("network", "country", "language", "channel")
    ],
}

ACTIVE_TITLE = "Unrest after the Oasis Festival broadcast"
RESOLVED_TITLE = "Drill: press freedom day rehearsal"

# ------------------------------------------------------------------------- seeded text


@dataclass(frozen=True)
class Person:
    """A member as posted, and the parts of it that are personal."""

    key: str
    payload: dict[str, Any]
    private: tuple[str, ...] = ()


def _person(key: str, *, private: tuple[str, ...] = (), **fields: Any) -> Person:
    payload = member_payload(quiet_hours=None, tags=["confidential-list"], **fields)
    return Person(key, payload, private)


PEOPLE = [
    _person(
        "arabic",
        network="personalities",
        name="عبد الرحمن الزيتوني",
        organization="صحيفة الفجر الجديد",
        title="رئيس تحرير الفجر",
        country="EG",
        languages=["ar", "en"],
        email="a.zaytouni@alfajr-newsroom.example.org",
        webhook_url="https://93.184.215.14/hooks/alfajr-zaytouni",
        consent={
            "given_at": "2026-01-15T10:00:00+00:00",
            "method": "written",
            "note": "موافقة خطية من الزيتوني",
        },
        private=("الزيتوني", "zaytouni", "alfajr-newsroom", "93.184.215.14", "/hooks/alfajr"),
    ),
    _person(
        "french",
        network="editors",
        name="Gaëlle Lefèvre-d'Ornano",
        organization="Le Courrier de l'Atlas",
        title="Rédactrice en chef adjointe",
        country="FR",
        languages=["fr"],
        email="gaelle.lefevre-dornano@courrier-atlas.example.org",
        private=("Lefèvre", "d'Ornano", "courrier-atlas"),
    ),
    _person(
        "english",
        network="editors",
        name="Obadiah Thistlewood",
        organization="Thistlewood Media Trust",
        title="Managing editor, night desk",
        country="MA",
        languages=["en"],
        email="o.thistlewood@ledger-desk.example.org",
        webhook_url="https://93.184.216.34:8443/inbound/thistlewood-desk",
        private=("Thistlewood", "ledger-desk", "93.184.216.34", "thistlewood-desk"),
    ),
    _person(
        "mixed",
        network="personalities",
        name="Yousra El Mansouri — يسرى المنصوري",
        organization="Radio Mosaïque Tunis",
        title="Chroniqueuse, Mosaïque matin",
        country="TN",
        languages=["fr", "ar"],
        email=None,
        webhook_url="https://93.184.215.14/hooks/mansouri-tn",
        private=("Yousra", "Mansouri", "المنصوري", "mansouri-tn"),
    ),
    _person(
        "escalation",
        network="personalities",
        name="Ṣāliḥ Qabbānī",
        organization="Beirut Voices Collective",
        title="Founder of Beirut Voices",
        country="LB",
        languages=["ar", "fr"],
        email="s.qabbani@beirut-voices.example.org",
        private=("Qabbānī", "qabbani", "beirut-voices"),
    ),
    _person(
        "paused",
        network="editors",
        name="Rosalind Achterberg",
        organization="Achterberg Weekly",
        title="Publisher, Achterberg Weekly",
        country="MA",
        languages=["en"],
        email="r.achterberg@paused-desk.example.org",
        status="paused",
        private=("Achterberg", "paused-desk"),
    ),
]

ROSTER = {"name": "Rédacteurs — Maghreb (confidentiel)", "description": "Liste interne, Atlas"}
ESCALATION_ROSTER = {"name": "Escalade — شخصيات المشرق"}
NOTIFY_EMAIL = "crisis.desk@rrmm-ops.example.org"


def _entry(subject: str, body: str, *points: str) -> dict[str, Any]:
    return {"subject": subject, "body": body, "talking_points": list(points)}


ACTIVE_BRIEFING = {
    "en": _entry(
        "Quiet line for the Tafilalt imams",
        "Please avoid repeating the forged quote attributed to Sheikh Marwazi.\n\n"
        "The ministry will publish a denial at 18:00.",
        "Cite the UNESCO statement of 12 March",
        "Never name the cartoonist",
    ),
    "ar": _entry(
        "رسالة هادئة إلى أئمة تافيلالت",
        "يرجى تجنب تكرار الاقتباس المزور المنسوب إلى الشيخ المروزي.",
        "استشهدوا ببيان اليونسكو الصادر في 12 مارس",
    ),
    "fr": _entry(
        "Message apaisé pour les imams du Tafilalt",
        "Merci de ne pas reprendre la citation forgée attribuée au cheikh Marwazi.",
        "Citer la déclaration de l'UNESCO du 12 mars",
    ),
}
UPDATE_BRIEFING = {
    "en": _entry(
        "Correction on the Marwazi denial",
        "The denial moved to 20:00; the Marwazi family asks for restraint.",
    ),
    "ar": _entry("تصحيح بشأن نفي المروزي", "تأجل النفي إلى الساعة الثامنة مساءً."),
    "fr": _entry("Rectificatif sur le démenti Marwazi", "Le démenti est reporté à 20 h."),
}
RESOLVED_BRIEFING = {
    "en": _entry("Rehearsal: call the Benkirane desk", "Call Mrs Benkirane's desk in Casablanca."),
    "ar": _entry("تمرين: اتصلوا بمكتب بنكيران", "اتصلوا بمكتب السيدة بنكيران في الدار البيضاء."),
    "fr": _entry("Exercice : appelez le bureau Benkirane", "Appelez le bureau de Mme Benkirane."),
}
STAND_DOWN = {
    "en": _entry("Stand down: Benkirane rehearsal over", "Thank you for rehearsing with Qalamoun."),
    "ar": _entry("انتهى تمرين بنكيران", "شكراً لمشاركتكم في تمرين القلمون."),
    "fr": _entry("Fin de l'exercice Benkirane", "Merci d'avoir répété avec Qalamoun."),
}

PHONE = "+212 661 23 45 67"
COMMENTS = {
    "french": f"Édito lundi — appelez mon portable privé {PHONE}",
    "english_first": "Thistlewood will run it, off the record: the owner objects",
    "english": "Second thoughts: the owner of the Ledger wants a call first",
    "arabic": "سأتصل بالمفتي شخصياً قبل صلاة الجمعة",
    "resolved": "تمرين مفيد، لكن رقم هاتفي تغيّر",
}


def _briefing_text(*briefings: dict[str, Any]) -> list[str]:
    texts = []
    for briefing in briefings:
        for entry in briefing.values():
            texts += [entry["subject"], entry["body"], *entry["talking_points"]]
            texts += [line for line in entry["body"].splitlines() if line.strip()]
    return texts


# ------------------------------------------------------------------------- the detector


def _forms(secret: str) -> set[str]:
    """The ways a string may be written into a body or a header, lower-cased."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],  # ASCII-escaped JSON (\u0639…), as json.dumps writes it
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
        quote_plus(secret),
        html.escape(secret),
        str(markupsafe.escape(secret)),  # Jinja's autoescape (' is &#39;)
    }
    return {form.lower() for form in forms if form}


@dataclass
class Secrets:
    """Every string a viewer must not see, each in every form it could be written in."""

    values: list[str] = field(default_factory=list)

    def add(self, *values: str | None) -> None:
        self.values += [v for v in values if v]

    def found_in(self, response: HttpResponse) -> list[str]:
        """The secrets in the response's body or headers, but those the request's own URL
        carried (a problem's `instance` repeats the path the caller sent)."""
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        text = response.content.decode("utf-8", "replace") + "\n" + headers
        asked = self.found_in_text(str(response.request.url))
        return [s for s in self.found_in_text(text) if s not in asked]

    def found_in_text(self, text: str) -> list[str]:
        lowered = text.lower()
        return [s for s in self.values if any(form in lowered for form in _forms(s))]


# ------------------------------------------------------------------------- the seed


@dataclass
class Seeded:
    members: dict[str, dict[str, Any]]
    roster_id: str
    active: dict[str, Any]
    resolved: dict[str, Any]
    secrets: Secrets
    tampered_token: str

    def path_parameters(self) -> Iterator[dict[str, str]]:
        """One set of path parameters per incident (active, then resolved)."""
        for incident in (self.active, self.resolved):
            yield {
                "incident_id": incident["id"],
                "member_id": self.members["arabic"]["id"],
                "roster_id": self.roster_id,
            }


@pytest.fixture
def viewer(auth: Callable[[Role], Headers]) -> Headers:
    return auth(Role.VIEWER)


def _ok(response: HttpResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _token(
    session_factory: sessionmaker[Session],
    signer: AckTokenSigner,
    incident: dict[str, Any],
    member: dict[str, Any],
    channel: str,
) -> str:
    """A link for the member's first delivery on this channel, as the worker would write."""
    with session_factory() as session:
        delivery_id = session.scalar(
            select(Delivery.id)
            .join(Briefing, Briefing.id == Delivery.briefing_id)
            .where(
                Delivery.incident_id == uuid.UUID(incident["id"]),
                Delivery.member_id == uuid.UUID(member["id"]),
                Delivery.channel == channel,
                Briefing.version == 1,
            )
        )
    assert delivery_id is not None, (member["name"], channel)
    return signer.sign(delivery_id, utcnow() + timedelta(days=1))


def _answer_on_page(client: TestClient, token: str, response: str, comment: str) -> None:
    page = client.post(f"/ack/{token}", data={"response": response, "comment": comment})
    assert page.status_code == 200, page.text


def _answer_by_api(client: TestClient, token: str, response: str, comment: str) -> None:
    _ok(client.post("/v1/acks", json={"token": token, "response": response, "comment": comment}))


@pytest.fixture
def seeded(
    client: TestClient,
    app: FastAPI,
    auth: Callable[[Role], Headers],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> Seeded:
    operator = auth(Role.OPERATOR)
    secrets = Secrets()
    members: dict[str, dict[str, Any]] = {}
    for person in PEOPLE:
        created = _ok(client.post("/v1/members", json=person.payload, headers=operator), 201)
        members[person.key] = created
        secrets.add(
            created["id"],
            created["name"],
            created["organization"],
            created["title"],
            created["email"],
            created["webhook_url"],
            created.get("webhook_secret"),
            created["consent"].get("note"),
            *person.private,
        )
        if created["email"]:
            local, domain = created["email"].split("@")
            secrets.add(local, domain)

    roster = _ok(client.post("/v1/rosters", json=ROSTER, headers=operator), 201)
    escalation = _ok(client.post("/v1/rosters", json=ESCALATION_ROSTER, headers=operator), 201)
    for target, keys in (
        (roster, ("arabic", "french", "english", "paused")),
        (escalation, ("escalation",)),
    ):
        _ok(
            client.post(
                f"/v1/rosters/{target['id']}/members",
                json={"member_ids": [members[k]["id"] for k in keys]},
                headers=operator,
            )
        )
    secrets.add(roster["id"], escalation["id"], ROSTER["name"], ROSTER["description"])
    secrets.add(ESCALATION_ROSTER["name"], NOTIFY_EMAIL)

    active = _ok(
        client.post(
            "/v1/incidents",
            json={
                "title": ACTIVE_TITLE,
                "severity": "severe",
                "urgency": "immediate",
                "countries": ["MA", "EG", "TN"],
                "themes": ["religious-hatred"],
                "audience": {"rosters": [roster["id"]], "member_ids": [members["mixed"]["id"]]},
                "briefing": ACTIVE_BRIEFING,
                "followup": {
                    "reminders": 1,
                    "reminder_interval_seconds": 1,
                    "escalation_rosters": [escalation["id"]],
                    "quotas": [
                        {"network": "editors", "responses": ["will_engage"], "min": 2},
                        {
                            "countries": ["EG", "TN", "LB"],
                            "languages": ["ar"],
                            "responses": ["acknowledged", "will_engage"],
                            "min": 2,
                        },
                    ],
                    "notify_emails": [NOTIFY_EMAIL],
                },
            },
            headers=operator,
        ),
        202,
    )
    assert active["targeted"] == 4  # the paused member is in the roster but not targeted

    arabic, french, english = (members[k] for k in ("arabic", "french", "english"))
    move(session_factory, active, french, DeliveryStatus.SENT, channel="email")
    move(session_factory, active, english, DeliveryStatus.SENT, channel="email")
    move(
        session_factory,
        active,
        english,
        DeliveryStatus.FAILED,
        channel="webhook",
        error="ConnectError: 93.184.216.34:8443 refused (thistlewood-desk)",
    )
    move(
        session_factory,
        active,
        arabic,
        DeliveryStatus.FAILED,
        channel="email",
        error="550 a.zaytouni@alfajr-newsroom.example.org: mailbox unavailable",
    )
    move(session_factory, active, arabic, DeliveryStatus.SENT, channel="webhook")

    signer: AckTokenSigner = app_state(app).ack_signer
    _answer_on_page(
        client,
        _token(session_factory, signer, active, french, "email"),
        "will_engage",
        COMMENTS["french"],
    )
    english_token = _token(session_factory, signer, active, english, "email")
    _answer_by_api(client, english_token, "will_engage", COMMENTS["english_first"])
    _answer_by_api(client, english_token, "will_engage", COMMENTS["english"])
    _answer_by_api(
        client,
        _token(session_factory, signer, active, arabic, "webhook"),
        "need_briefing_call",
        COMMENTS["arabic"],
    )

    _ok(
        client.post(
            f"/v1/incidents/{active['id']}/updates",
            json={"briefing": UPDATE_BRIEFING},
            headers=operator,
        ),
        202,
    )
    # The reminder (the Tunisian member is silent) and the escalation (the Arabic-speaking
    # quota is unmet) fire as the sweeper would; their own sends are not under test.
    fired = []
    with session_scope(session_factory) as session:
        while timer := followup.take_due_timer(session, utcnow() + timedelta(seconds=30)):
            timer.outcome = followup.fire(
                session, timer, settings=settings, dispatch=lambda _briefing_id: None
            )
            fired.append((timer.kind, timer.outcome))
    assert fired == [
        ("reminder", "reminded 1 members (1 deliveries)"),
        ("escalation", "escalated to 1 members (1 deliveries)"),
    ]

    resolved = _ok(
        client.post(
            "/v1/incidents",
            json={
                "title": RESOLVED_TITLE,
                "severity": "moderate",
                "urgency": "expected",
                "mode": "exercise",
                "countries": ["MA"],
                "audience": {"member_ids": [french["id"], arabic["id"]]},
                "briefing": RESOLVED_BRIEFING,
            },
            headers=operator,
        ),
        202,
    )
    move(session_factory, resolved, arabic, DeliveryStatus.SENT, channel="email")
    resolved_token = _token(session_factory, signer, resolved, arabic, "email")
    _answer_on_page(client, resolved_token, "acknowledged", COMMENTS["resolved"])
    resolved = _ok(
        client.post(
            f"/v1/incidents/{resolved['id']}/resolve",
            json={"briefing": STAND_DOWN},
            headers=operator,
        ),
        202,
    )
    assert resolved["status"] == "resolved"

    secrets.add(*_briefing_text(ACTIVE_BRIEFING, UPDATE_BRIEFING, RESOLVED_BRIEFING, STAND_DOWN))
    secrets.add(*COMMENTS.values(), PHONE)
    titles = f"{ACTIVE_TITLE} {RESOLVED_TITLE} {active['reference']} {resolved['reference']}"
    # A secret inside a title would be a false alarm: titles are shown to viewers.
    assert not secrets.found_in_text(titles), secrets.found_in_text(titles)
    raw = token_bytes(resolved_token)
    tampered = encode_token(raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit of the MAC
    return Seeded(members, roster["id"], active, resolved, secrets, tampered)


# ------------------------------------------------------------------------- calls


def viewer_calls(
    client: TestClient, route: Route, seeded: Seeded, headers: Headers
) -> Iterator[tuple[str, HttpResponse]]:
    """Every call of the route a viewer can make with what was seeded: each incident, each
    query string that changes the answer, the next page, the conditional status poll."""
    method, path = route
    parameter_sets = list(seeded.path_parameters()) if "{" in path else [{}]
    for parameters in parameter_sets:
        url = path.format_map(parameters)
        for query in QUERIES.get(route, [{}]):
            response = client.request(method, url, params=query, headers=headers)
            yield f"{method} {url} {query}", response
            if response.status_code != 200:
                continue
            body = response.json() if "json" in response.headers["content-type"] else None
            if isinstance(body, dict) and body.get("next_cursor"):
                cursor = {**query, "cursor": body["next_cursor"]}
                yield (
                    f"{method} {url} {cursor}",
                    client.request(method, url, params=cursor, headers=headers),
                )
            if etag := response.headers.get("etag"):
                conditional = {**headers, "If-None-Match": etag}
                yield (
                    f"{method} {url} If-None-Match",
                    client.request(method, url, params=query, headers=conditional),
                )


@pytest.mark.parametrize("route", EXERCISED, ids=[f"{m} {p}" for m, p in EXERCISED])
def test_a_viewer_sees_nothing_private(
    client: TestClient, seeded: Seeded, viewer: Headers, route: Route
) -> None:
    calls = list(viewer_calls(client, route, seeded, viewer))
    assert calls
    for label, response in calls:
        expected = 304 if label.endswith("If-None-Match") else 200
        assert response.status_code == expected, (label, response.text)
        assert response.content or expected == 304, label
        found = seeded.secrets.found_in(response)
        assert not found, f"{label} shows {found}"


def test_what_a_viewer_does_see(client: TestClient, seeded: Seeded, viewer: Headers) -> None:
    """The viewer calls above read the seeded incidents, not empty ones."""
    listed = _ok(client.get("/v1/incidents", headers=viewer))
    assert {i["title"] for i in listed["items"]} == {ACTIVE_TITLE, RESOLVED_TITLE}
    active_id = seeded.active["id"]
    status = _ok(client.get(f"/v1/incidents/{active_id}/status", headers=viewer))
    assert status["targeted"] == 5  # four declared, one escalated
    assert status["answers"]["by_response"] == {"will_engage": 2, "need_briefing_call": 1}
    assert [len(status["followup"][k]) for k in ("reminders", "escalations")] == [1, 1]
    coverage = _ok(client.get(f"/v1/incidents/{active_id}/coverage?by=country", headers=viewer))
    assert {g["group"] for g in coverage["groups"]} == {"EG", "FR", "LB", "MA", "TN"}
    quotas = _ok(client.get(f"/v1/incidents/{active_id}/quotas", headers=viewer))
    assert [(q["answered"], q["met"]) for q in quotas] == [(2, True), (0, False)]
    resolved = _ok(client.get(f"/v1/incidents/{seeded.resolved['id']}/status", headers=viewer))
    assert (resolved["status"], resolved["answers"]["answered"]) == ("resolved", 1)


def test_a_viewer_learns_nothing_by_searching(
    client: TestClient, seeded: Seeded, viewer: Headers
) -> None:
    """`q` matches the title and the reference only: searching for a name, an address, a
    comment or a line of a briefing finds nothing, exactly as a word that is nowhere."""
    nothing: dict[str, Any] = {"items": [], "next_cursor": None}
    found = _ok(client.get("/v1/incidents", params={"q": "OASIS festival"}, headers=viewer))
    assert [i["id"] for i in found["items"]] == [seeded.active["id"]]
    assert _ok(client.get("/v1/incidents", params={"q": uuid.uuid4().hex}, headers=viewer)) == (
        nothing
    )
    searchable = [s for s in seeded.secrets.values if "\n" not in s and len(s) <= 200]
    assert len(searchable) > 40
    for secret in searchable:
        response = client.get("/v1/incidents", params={"q": secret}, headers=viewer)
        assert _ok(response) == nothing, secret


def test_a_viewer_is_refused_operator_routes_without_a_word_more(
    client: TestClient, seeded: Seeded, viewer: Headers
) -> None:
    assert FORBIDDEN
    [ids, *_] = seeded.path_parameters()
    for method, path in FORBIDDEN:
        kwargs = role_test_request(method, path, ids)
        kwargs["headers"].update(viewer)
        response = client.request(method, **kwargs)
        body = assert_problem(response, 403)
        assert "role" in body["detail"], (method, path, body)
        found = seeded.secrets.found_in(response)
        assert not found, f"{method} {path} shows {found}"


def test_a_viewer_with_a_tampered_link_sees_only_the_invalid_page(
    client: TestClient, seeded: Seeded, viewer: Headers
) -> None:
    """The ack page is the member's (its credential is the link): a viewer who alters a link
    it has seen gets the generic page, for reading and for answering."""
    for method in ("GET", "POST"):
        data = {"response": "acknowledged"} if method == "POST" else None
        page = client.request(method, f"/ack/{seeded.tampered_token}", data=data, headers=viewer)
        assert page.status_code == 404, page.text
        assert not seeded.secrets.found_in(page), seeded.secrets.found_in(page)
        assert RESOLVED_TITLE not in page.text


def test_a_viewer_person_sees_nothing_private_in_the_console(
    client: TestClient, seeded: Seeded, session_factory: sessionmaker[Session]
) -> None:
    with session_scope(session_factory) as session:
        link = people.create_person(
            session, email="watcher@x.org", name="Watcher", role=Role.VIEWER, actor=Principal.cli()
        )
        person = session.get(PersonRow, link.person.id)
        assert person is not None
        person.status = "active"
        policy = people.SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=1))
        cookie, _ = people.open_session(session, person, policy=policy, address=None)
    # The suite's client (one lifespan per app), the session cookie sent as a browser would.
    page = client.get("/console", headers={"Cookie": f"__Host-rrmm_session={cookie}"})
    assert page.status_code == 200, page.text
    assert ACTIVE_TITLE in page.text  # the incidents are there: titles are not private
    assert RESOLVED_TITLE in page.text
    found = seeded.secrets.found_in(page)
    assert not found, f"the console shows a viewer {found}"


def test_every_viewer_route_is_exercised(app: FastAPI) -> None:
    """Any route a viewer key (or no key) can call is in `EXERCISED`, but the event stream.

    Token-authenticated routes (the ack page, `POST /v1/acks`) are the member's own."""
    reachable = (
        {
            route
            for route, dependant in app_routes(app, prefix="/").items()
            if required_roles(dependant) <= {Role.VIEWER}
        }
        - ACK_PAGE
        - TOKEN_AUTHENTICATED
        - CONSOLE_PAGE
    )
    assert reachable - set(EXERCISED) <= {SSE_ROUTE}, sorted(reachable - set(EXERCISED))
    assert set(EXERCISED) <= reachable, sorted(set(EXERCISED) - reachable)


# ------------------------------------------------------------------------- the test can fail


def test_the_detector_finds_what_operators_see(
    client: TestClient, seeded: Seeded, auth: Callable[[Role], Headers]
) -> None:
    """The same detector on operator routes finds the seeded names, contacts, comments and
    briefing text: the markers are real and would be caught if a viewer route showed them."""
    operator = auth(Role.OPERATOR)
    for person in PEOPLE:
        member = seeded.members[person.key]
        response = client.get(f"/v1/members/{member['id']}", headers=operator)
        assert response.status_code == 200, response.text
        found = seeded.secrets.found_in(response)
        contacts = [member["name"], member["email"], member["webhook_url"], *person.private]
        assert {c for c in contacts if c} <= set(found), (person.key, found)

    active_id = seeded.active["id"]
    acks = client.get(f"/v1/incidents/{active_id}/acks", headers=operator)
    found = seeded.secrets.found_in(acks)
    assert {COMMENTS["french"], COMMENTS["english"], COMMENTS["arabic"], PHONE} <= set(found)
    briefings = client.get(f"/v1/incidents/{active_id}/briefings", headers=operator)
    found = seeded.secrets.found_in(briefings)
    assert {ACTIVE_BRIEFING["ar"]["subject"], UPDATE_BRIEFING["fr"]["body"]} <= set(found)

    # The other ways of writing a string: ASCII-escaped JSON (the status route writes it so),
    # a URL-encoded query string, HTML from a template.
    name = seeded.members["arabic"]["name"]
    assert name in seeded.secrets.found_in_text(json.dumps({"name": name}))
    assert name in seeded.secrets.found_in_text(f"/v1/incidents?q={quote_plus(name)}".upper())
    french = seeded.members["french"]["name"]
    assert french in seeded.secrets.found_in_text(f"<p>{markupsafe.escape(french)}</p>")
