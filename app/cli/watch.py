"""`rrmm watch`: an incident's status, live in the terminal.

It reads what a dashboard reads: `GET /v1/incidents/{id}/status` (polled with
`If-None-Match`, so an unchanged status costs a 304) and, only when the status changed,
the coverage funnel. A viewer key is enough. `rrmm demo` shows the same frame.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app.vocabulary import (
    ENDED_INCIDENT_STATUSES,
    OPEN_DELIVERY_STATUSES,
    DeliveryStatus,
    IncidentStatus,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# The order in which delivery states are shown: the funnel, then the dead ends.
STATES = (
    DeliveryStatus.SENT,
    DeliveryStatus.SENDING,
    DeliveryStatus.PENDING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
    DeliveryStatus.CANCELLED,
    DeliveryStatus.SUPERSEDED,
)
_STATE_STYLE: dict[str, str] = {
    DeliveryStatus.SENT: "green",
    DeliveryStatus.SENDING: "cyan",
    DeliveryStatus.PENDING: "white",
    DeliveryStatus.RETRYING: "yellow",
    DeliveryStatus.FAILED: "red",
    DeliveryStatus.SKIPPED: "dim",
    DeliveryStatus.SUPERSEDED: "dim",
    DeliveryStatus.CANCELLED: "dim",
}
_REFERENCE = re.compile(r"^RRMM-\d{4}-\d+$", re.IGNORECASE)


class Grouping(StrEnum):
    """How the coverage funnel groups members."""

    language = "language"
    network = "network"
    country = "country"
    channel = "channel"


class WatchError(Exception):
    """What went wrong, in one line for the user (never the key)."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return f": {detail}" if isinstance(detail, str) and detail else ""


@dataclass
class StatusClient:
    """The two dashboard routes, over one keep-alive connection.

    `poll()` sends the last ETag back; the coverage is fetched again only when the status
    changed, since it runs GROUP BY queries on the server and the status does not.
    """

    url: str
    key: str
    groupings: tuple[Grouping, ...] = (Grouping.language,)
    timeout: float = 10.0
    incident_id: uuid.UUID | None = None
    status: dict[str, Any] | None = None
    coverage: dict[Grouping, list[dict[str, Any]]] = field(default_factory=dict)
    etag: str | None = None
    _client: httpx.Client | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}", "User-Agent": "rrmm-watch/1"},
            timeout=self.timeout,
            follow_redirects=False,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get(self, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        assert self._client is not None
        try:
            response = self._client.get(path, **kwargs)
        except httpx.ConnectError as exc:
            raise WatchError(
                f"cannot connect to {self.url}: connection refused (is `rrmm run` running?)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise WatchError(f"{self.url} did not answer within {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise WatchError(f"request to {self.url} failed: {type(exc).__name__}") from exc
        if response.status_code == 401:
            raise WatchError(
                f"{self.url} refused the API key (401 Unauthorized): "
                "pass a valid key with --key or RRMM_API_KEY"
            )
        if response.status_code == 403:
            raise WatchError(
                f"this API key may not read incidents (403 Forbidden){_detail(response)}"
            )
        if response.status_code == 404:
            raise WatchError(f"no incident {what} at {self.url} (404 Not Found)")
        if response.status_code >= 400:
            raise WatchError(
                f"{self.url} answered {response.status_code} for {what}{_detail(response)}"
            )
        return response

    def resolve(self, incident: str) -> uuid.UUID:
        """An id as given, or the incident whose reference is `incident` (RRMM-2026-0007),
        found with the incidents list's text filter."""
        text = incident.strip()
        try:
            self.incident_id = uuid.UUID(text)
            return self.incident_id
        except ValueError:
            pass
        if not _REFERENCE.match(text):
            raise WatchError(
                f"{incident!r} is neither an incident id (UUID) nor a reference (RRMM-2026-0007)"
            )
        cursor: str | None = None
        for _page in range(20):  # the filter narrows to a handful; this only bounds a surprise
            params: dict[str, Any] = {"q": text, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            body = self._get("/v1/incidents", what=text, params=params).json()
            for item in body.get("items", []):
                if str(item.get("reference", "")).upper() == text.upper():
                    self.incident_id = uuid.UUID(item["id"])
                    return self.incident_id
            cursor = body.get("next_cursor")
            if not cursor:
                break
        raise WatchError(f"no incident {text} at {self.url}")

    def poll(self) -> bool:
        """Read the status; True when it changed (and the coverage was read again)."""
        assert self.incident_id is not None, "resolve() first"
        base = f"/v1/incidents/{self.incident_id}"
        headers = {"If-None-Match": self.etag} if self.etag else {}
        response = self._get(f"{base}/status", what=str(self.incident_id), headers=headers)
        if response.status_code == 304 and self.status is not None:
            return False
        self.status = response.json()
        self.etag = response.headers.get("ETag")
        for grouping in self.groupings:
            body = self._get(
                f"{base}/coverage", what=str(self.incident_id), params={"by": grouping.value}
            ).json()
            self.coverage[grouping] = body.get("groups", [])
        return True


# ---------------------------------------------------------------------------- state


def in_flight(status: dict[str, Any]) -> int:
    by_status: dict[str, int] = status["deliveries"]["by_status"]
    return sum(by_status.get(state, 0) for state in OPEN_DELIVERY_STATUSES)


def is_settled(status: dict[str, Any], *, ended: bool = False) -> bool:
    """No delivery pending, sending or retrying (and, with `ended`, the incident over)."""
    return in_flight(status) == 0 and (not ended or status["status"] in ENDED_INCIDENT_STATUSES)


# ---------------------------------------------------------------------------- rendering


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _moment(value: str | None, now: datetime) -> str:
    if not value:
        return "—"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    ago = max((now - moment).total_seconds(), 0.0)
    return f"{moment.astimezone(UTC):%H:%M:%S}Z ({_duration(ago)} ago)"


def _header(status: dict[str, Any], now: datetime) -> RenderableType:
    exercise = status["mode"] == "exercise"
    line = Text()
    line.append(status["reference"], style="bold")
    line.append("   ")
    if exercise:
        line.append(" EXERCISE ", style="bold black on yellow")
    else:
        line.append(" ACTUAL ", style="bold white on red")
    line.append("   status ")
    styles = {IncidentStatus.ACTIVE: "bold green", IncidentStatus.PENDING_APPROVAL: "bold yellow"}
    line.append(status["status"], style=styles.get(status["status"], "bold"))
    line.append("   severity ")
    line.append(status["severity"], style="bold")
    line.append("   targeted ")
    line.append(str(status["targeted"]), style="bold")
    times = Text(
        f"declared {_moment(status.get('declared_at'), now)}   "
        f"last change {_moment(status.get('last_change_at'), now)}",
        style="dim",
    )
    parts: list[RenderableType] = [line, times]
    if exercise:
        parts.append(Text("EXERCISE — no real incident is taking place.", style="yellow"))
    return Group(*parts)


def _states(counts: dict[str, int]) -> Text:
    text = Text()
    shown = [s for s in STATES if counts.get(s)] + sorted(set(counts) - set(STATES))
    for n, state in enumerate(shown):
        if n:
            text.append(" · ", style="dim")
        text.append(f"{state} {counts[state]}", style=_STATE_STYLE.get(state, ""))
    return text if shown else Text("—", style="dim")


def _deliveries(status: dict[str, Any]) -> RenderableType:
    table = Table(title="Deliveries", title_justify="left", expand=False, box=None, padding=(0, 1))
    table.add_column("channel")
    table.add_column("", no_wrap=True)
    table.add_column("final", no_wrap=True, justify="right")
    table.add_column("by state")
    rows = dict(sorted(status["deliveries"]["by_channel"].items()))
    rows["all"] = status["deliveries"]["by_status"]
    for channel, counts in rows.items():
        total = sum(counts.values())
        final = sum(counts.get(state, 0) for state in STATES if state not in OPEN_DELIVERY_STATUSES)
        table.add_row(
            Text(channel, style="bold" if channel == "all" else ""),
            ProgressBar(total=max(total, 1), completed=final, width=16),
            f"{final}/{total}",
            _states(counts),
        )
    return table


def _answers(status: dict[str, Any]) -> RenderableType:
    answers = status["answers"]
    rate = answers.get("ack_rate")
    head = Text()
    head.append("Answers ", style="bold")
    head.append(f"{answers['answered']}/{status['targeted']}")
    head.append(f"   ack rate {rate * 100:.1f}%" if rate is not None else "   ack rate —")
    head.append(f"   first {_duration(answers.get('first_answer_seconds'))}")
    head.append(f"   median {_duration(answers.get('median_answer_seconds'))}")
    by_response: dict[str, int] = answers.get("by_response", {})
    if not by_response:
        return Group(head, Text("  no answer yet", style="dim"))
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column("response")
    table.add_column("count", justify="right")
    table.add_column("bar", no_wrap=True)
    top = max(by_response.values())
    for response, count in sorted(by_response.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(
            f"  {response}", str(count), ProgressBar(total=top, completed=count, width=20)
        )
    return Group(head, table)


def _coverage(grouping: Grouping, groups: list[dict[str, Any]]) -> RenderableType:
    table = Table(
        title=f"Coverage by {grouping.value}", title_justify="left", box=None, padding=(0, 1)
    )
    for column in (grouping.value, "targeted", "sent", "failed", "answered"):
        table.add_column(column, justify="left" if column == grouping.value else "right")
    for group in groups:
        table.add_row(
            group["group"],
            str(group["targeted"]),
            str(group["sent"]),
            Text(str(group["failed"]), style="red" if group["failed"] else ""),
            str(group["answered"]),
        )
    if not groups:
        table.add_row("—", "", "", "", "")
    return table


def _segment(quota: dict[str, Any]) -> str:
    parts = [quota.get("network") or "every network"]
    if quota.get("countries"):
        parts.append(",".join(quota["countries"]))
    if quota.get("languages"):
        parts.append(",".join(quota["languages"]))
    return " · ".join(parts) + f" → {'/'.join(quota['responses'])}"


def _quotas(status: dict[str, Any]) -> RenderableType | None:
    quotas = status.get("quotas") or []
    if not quotas:
        return None
    table = Table(title="Quotas", title_justify="left", box=None, padding=(0, 1))
    table.add_column("segment")
    table.add_column("answered/min", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("")
    for quota in quotas:
        table.add_row(
            _segment(quota),
            f"{quota['answered']}/{quota['min']}",
            ProgressBar(
                total=quota["min"], completed=min(quota["answered"], quota["min"]), width=12
            ),
            Text("met", style="bold green") if quota["met"] else Text("unmet", style="yellow"),
        )
    return table


def _followup(status: dict[str, Any]) -> Text:
    followup = status.get("followup", {})
    reminders = followup.get("reminders", [])
    escalations = followup.get("escalations", [])
    text = Text()
    text.append("Follow-up ", style="bold")
    text.append(f"reminders {len(reminders)}   escalations {len(escalations)}")
    for label, fired in (("reminder", reminders), ("escalation", escalations)):
        if fired and fired[-1].get("outcome"):
            text.append(f"\n  last {label}: {fired[-1]['outcome']}", style="dim")
    return text


def render(
    status: dict[str, Any],
    coverage: dict[Grouping, list[dict[str, Any]]] | None = None,
    *,
    now: datetime | None = None,
    footer: str | None = None,
) -> RenderableType:
    """One frame: the same figures as the status board."""
    now = now or datetime.now(UTC)
    parts: list[RenderableType] = [_header(status, now), Text(), _deliveries(status), Text()]
    parts.append(_answers(status))
    for grouping, groups in (coverage or {}).items():
        parts += [Text(), _coverage(grouping, groups)]
    quotas = _quotas(status)
    if quotas is not None:
        parts += [Text(), quotas]
    parts += [Text(), _followup(status)]
    if footer:
        parts.append(Text(footer, style="dim"))
    exercise = status["mode"] == "exercise"
    return Panel(
        Group(*parts),
        title=f"RRMM · {status['reference']}" + (" · EXERCISE" if exercise else ""),
        title_align="left",
        border_style="yellow" if exercise else "red",
        expand=False,
    )


def frame(client: StatusClient, *, footer: str | None = None) -> RenderableType:
    assert client.status is not None
    return render(client.status, client.coverage, footer=footer)


# ---------------------------------------------------------------------------- the command


def _groupings(values: Iterable[Grouping] | None) -> tuple[Grouping, ...]:
    return tuple(dict.fromkeys(values or (Grouping.language,)))


def watch(
    incident: Annotated[
        str, typer.Argument(help="The incident's id (UUID) or reference (RRMM-2026-0007).")
    ],
    url: Annotated[
        str, typer.Option(envvar="RRMM_URL", help="Base URL of the RRMM API.")
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="RRMM_API_KEY",
            help="An API key (a viewer key is enough). Prefer the environment variable.",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between two reads of the status.")
    ] = 2.0,
    by: Annotated[
        list[Grouping] | None,
        typer.Option(
            "--by",
            help="Coverage grouping(s) to show (repeat the option).",
            show_default="language",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit (for scripts).")
    ] = False,
    until_settled: Annotated[
        bool,
        typer.Option(
            "--until-settled", help="Exit once no delivery is pending, sending or retrying."
        ),
    ] = False,
    until_ended: Annotated[
        bool,
        typer.Option(
            "--until-ended",
            help="Exit once the incident is resolved or cancelled and its deliveries settled.",
        ),
    ] = False,
) -> None:
    """Follow an incident live: deliveries per channel, answers, quotas, follow-up."""
    err = Console(stderr=True, highlight=False)
    if not key:
        err.print("an API key is required: --key or RRMM_API_KEY", style="red", markup=False)
        raise typer.Exit(2)
    console = Console(highlight=False)
    try:
        with StatusClient(url, key, groupings=_groupings(by)) as client:
            client.resolve(incident)
            client.poll()
            if once:
                console.print(frame(client))
                return
            _follow(client, console, interval, until_settled=until_settled, until_ended=until_ended)
    except WatchError as exc:
        err.print(f"rrmm watch: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        return


def _follow(
    client: StatusClient,
    console: Console,
    interval: float,
    *,
    until_settled: bool,
    until_ended: bool,
) -> None:
    footer = f"polling {client.url} every {interval:g}s · Ctrl-C to stop"
    with Live(frame(client, footer=footer), console=console, auto_refresh=False) as live:
        while True:
            assert client.status is not None
            if until_ended and is_settled(client.status, ended=True):
                return
            if until_settled and is_settled(client.status):
                return
            time.sleep(interval)
            client.poll()
            # Redrawn even when unchanged: the "… ago" times move on.
            live.update(frame(client, footer=footer), refresh=True)
