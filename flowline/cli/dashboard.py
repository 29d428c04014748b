"""``flowline dashboard``: serve the web dashboard of the pipeline(s) at TARGET."""

from __future__ import annotations

import click

from .._settings import Settings
from ..errors import ConfigurationError
from ._common import load_pipelines, nats_option, redis_option, run, tls_option
from ._main import main


@main.command()
@click.argument("target")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="FLOWLINE_DASHBOARD_HOST",
    help="Address to bind; anything but loopback needs --auth.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="FLOWLINE_DASHBOARD_PORT",
    help="Port to bind (0: any free port).",
)
@click.option(
    "--auth",
    envvar="FLOWLINE_DASHBOARD_AUTH",
    metavar="USER:PASSWORD|token",
    help="Require HTTP Basic USER:PASSWORD, or 'token' for the token in "
    "FLOWLINE_DASHBOARD_TOKEN. Without it the dashboard is read-only and loopback only.",
)
@nats_option
@redis_option
@tls_option
def dashboard(
    target: str,
    host: str,
    port: int,
    auth: str | None,
    nats_url: str | None,
    redis_url: str | None,
    tls_ca: str | None,
) -> None:
    """Serve the web dashboard of the pipeline(s) at TARGET (module:attr)."""
    try:
        from ..dashboard import Auth, serve
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs its extra: pip install 'flowline[dashboard]' ({exc})"
        ) from None
    pipelines = load_pipelines(target)
    try:
        credential = Auth.parse(auth) if auth is not None else None
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None

    def ready(url: str) -> None:
        mode = f"{credential.scheme} required" if credential else "read-only, no --auth"
        click.echo(f"flowline dashboard on {url} ({mode}); Ctrl-C stops it", err=True)

    async def go() -> None:
        settings = Settings.from_env(nats_url=nats_url, redis_url=redis_url, tls_ca=tls_ca)
        await serve(pipelines, settings, host=host, port=port, auth=credential, on_ready=ready)

    run(go)
