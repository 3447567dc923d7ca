"""`prodsentinel demo`, added to Litestar's CLI by a CLIPlugin (like ``auth/cli.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from litestar.cli._utils import LitestarEnv
from litestar.plugins import CLIPluginProtocol

from prodsentinel.auth import services as auth_services
from prodsentinel.lib.database import session_scope_for_app
from prodsentinel.system.demo import DemoReport, run_demo

__all__ = ("DemoCLIPlugin",)

DEMO_PROJECT = "demo"


@click.command(
    name="demo",
    help=(
        "Fake services (frontend, checkout, inventory, payments) sending realistic telemetry to a running "
        "ProdSentinel, with a payments database outage that opens an incident and fires the demo alerts."
    ),
)
@click.option("--url", default=None, help="ProdSentinel base URL. [default: http://PRODSENTINEL_HOST:PORT]")
@click.option(
    "--api-key",
    default=None,
    help="Key with scopes admin,ingest. Default: create one in project 'demo' in this install's database.",
)
@click.option("--duration", default=90.0, show_default=True, type=click.FloatRange(min=1), help="Seconds.")
@click.option("--rate", default=5, show_default=True, type=click.IntRange(min=1), help="Traces per second.")
@click.option(
    "--failure-after",
    default=None,
    type=click.FloatRange(min=0),
    help="Seconds before the payments database starts timing out. [default: a third of --duration]",
)
@click.option("--no-failure", is_flag=True, help="Healthy traffic only.")
@click.option("--seed", default=None, type=int, help="Random seed (same seed, same telemetry shapes).")
@click.option(
    "--otlp",
    is_flag=True,
    help="Instrument the services with the OpenTelemetry SDK and export OTLP/HTTP to /v1/* (SPEC §11).",
)
def demo_command(
    ctx: click.Context,
    url: str | None,
    api_key: str | None,
    duration: float,
    rate: int,
    failure_after: float | None,
    no_failure: bool,
    seed: int | None,
    otlp: bool,
) -> None:
    if api_key is None:
        api_key = _create_demo_key(ctx)
    if url is None:
        settings = _settings(ctx)
        host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
        url = f"http://{host}:{settings.port}"
    if no_failure:
        failure_after = None
    elif failure_after is None:
        failure_after = duration / 3
    how = "OTLP (OpenTelemetry SDK)" if otlp else "JSON ingest"
    click.echo(f"demo: sending {rate} traces/s for {duration:.0f}s to {url} via {how}")
    report = asyncio.run(
        run_demo(
            url=url,
            api_key=api_key,
            duration=duration,
            rate=rate,
            failure_after=failure_after,
            seed=seed,
            say=lambda line: click.echo(f"demo: {line}"),
            otlp=otlp,
        )
    )
    _summary(report)


def _settings(ctx: click.Context) -> Any:
    from prodsentinel.settings import get_settings

    del ctx
    return get_settings()


def _create_demo_key(ctx: click.Context) -> str:
    """A fresh admin+ingest key in project 'demo', in the database this install uses (embedded or not)."""
    if not isinstance(ctx.obj, LitestarEnv):
        ctx.obj = ctx.obj()
    app = ctx.ensure_object(LitestarEnv).app

    async def create() -> str:
        async with session_scope_for_app(app) as session:
            created = await auth_services.create_key(
                session, name="demo", scopes=["admin", "ingest"], project=DEMO_PROJECT
            )
        return created.key

    key = asyncio.run(create())
    click.echo(f"demo: created API key 'demo' (admin,ingest) in project '{DEMO_PROJECT}'")
    return key


def _summary(report: DemoReport) -> None:
    click.echo(f"demo: alert policies: {', '.join(report.policies) or 'none created'}")
    if report.incidents:
        for incident in report.incidents:
            click.echo(
                f"demo: incident [{incident.get('severity')}] {incident.get('title')} "
                f"({incident.get('service_name')}, count {incident.get('count')})"
            )
    else:
        click.echo("demo: no open incident yet (grouping runs in the workers: is `workers run` up?)")
    for problem in report.problems:
        root = problem.get("root") or {}
        services = ", ".join(problem.get("services") or [])
        click.echo(
            f"demo: problem [{problem.get('severity')}] {problem.get('title')}: "
            f"{len(problem.get('incident_ids') or [])} incidents in {services}, "
            f"root {root.get('dependency') or root.get('service')}"
        )
    if report.alerts:
        for alert in report.alerts:
            labels = alert.get("labels") or {}
            name, value = labels.get("alertname"), alert.get("value")
            click.echo(f"demo: alert {alert.get('state')}: {name} value={value}")
    else:
        click.echo("demo: no active alert yet (evaluation runs every PRODSENTINEL_ALERTS_INTERVAL_SECONDS)")


class DemoCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(demo_command)
