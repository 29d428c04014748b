"""Serving the dashboard: check the address against the auth, bind, connect, serve until a signal.

The order is the order of the errors a user can make: a public address without ``--auth`` is
refused before anything is bound, a port in use before any server is contacted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
from collections.abc import Callable

from .._pipeline import Pipeline
from .._settings import Settings
from ..errors import ConfigurationError
from ..observability.http import HttpEndpoint
from ..runtime.connections import ping_redis
from ..runtime.runner import connect
from ..runtime.status import StatusReader
from .app import Dashboard, create_app
from .security import Auth


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_address(host: str, auth: Auth | None) -> None:
    """Refuse to serve an address other machines reach without authentication.

    Raises:
        ConfigurationError: `host` is not loopback and `auth` is None.
    """
    if auth is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without --auth "
            "(USER:PASSWORD, or 'token' with FLOWLINE_DASHBOARD_TOKEN set)"
        )


async def serve(
    pipelines: tuple[Pipeline, ...],
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    auth: Auth | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of `pipelines` until SIGTERM or SIGINT.

    Args:
        on_ready: called with the dashboard's URL once it answers.

    Raises:
        ConfigurationError: a public address without `auth`, an address that cannot be
            bound (a port in use), or a server that cannot be reached.
    """
    check_address(host, auth)
    endpoint = HttpEndpoint(None, host, port)
    endpoint.bind()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with connect(pipelines, settings) as runner, StatusReader(pipelines, settings) as st:
            assert runner.redis is not None
            await ping_redis(runner.redis, settings)  # every page reads Redis: fail at start
            dashboard = Dashboard(pipelines, runner, st, settings, auth)
            endpoint.app = create_app(dashboard)
            await endpoint.start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                if on_ready is not None:
                    on_ready(endpoint.url)
                await stop.wait()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                dashboard.closing.set()  # the events feeds end, so stopping waits for none
                await endpoint.stop()
    finally:
        await endpoint.stop()  # closes the bound socket when connecting failed
