"""`rrmm demo`: the whole mechanism on a synthetic network, in a minute or two.

It starts the embedded stack the way `rrmm run` does, but in a directory of its own (a
fresh SQLite file: never mixed with real data), creates a few hundred members with
English, Arabic and French names, half of them reached by webhook (a local newsroom
system that checks signatures and answers some briefings itself) and half by email (the
local catcher; the demo clicks a few of the links), declares an EXERCISE incident with
two coverage quotas and a quick reminder, and shows it unfold with `rrmm watch`'s view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.cli.demo_options import DemoError, Options


def demo(
    members: Annotated[
        int, typer.Option(min=3, max=5000, help="Members of the synthetic network.")
    ] = 300,
    auto_ack: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of webhook members whose newsroom answers."),
    ] = 0.6,
    email_ack: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of email members who click their link."),
    ] = 0.3,
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
    smtp_port: Annotated[
        int, typer.Option(help="Port of the local SMTP catcher (0: any free port).")
    ] = 0,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running/--exit",
            help="Keep the stack up after the summary, until Ctrl-C (default: stop it).",
        ),
    ] = False,
    var: Annotated[
        Path, typer.Option(help="The demo's own directory (database, mail, logs).")
    ] = Path("var/demo"),
    reminder_after: Annotated[
        int, typer.Option(min=1, help="Seconds before silent members are reminded.")
    ] = 30,
    timeout: Annotated[
        float, typer.Option(min=10, help="Give up waiting for the incident to settle after this.")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic network.")] = 2026,
) -> None:
    """See the whole mechanism at work on a synthetic network (an EXERCISE, on its own
    fresh database): fan-out by webhook and email, answers, a reminder, quotas."""
    options = Options(
        members,
        auto_ack,
        email_ack,
        port,
        smtp_port,
        keep_running,
        var.resolve(),
        reminder_after,
        timeout,
        seed,
    )
    # The stack (redis, alembic, faker, aiohttp...) is imported only when the demo runs.
    from app.cli.demo_stack import run_demo

    console = Console(highlight=False)
    try:
        code = run_demo(options, console)
    except DemoError as exc:
        Console(stderr=True).print(f"rrmm demo: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code)
