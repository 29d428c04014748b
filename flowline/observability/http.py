"""The HTTP endpoint of a flowline process: ``/metrics``, ``/healthz`` and ``/readyz``.

`asgi_app` is a Starlette app, so it can be mounted in any ASGI application; `HttpEndpoint`
serves it with uvicorn inside the runner's own event loop (so ``/healthz`` answering proves
that loop is not stalled). The socket is bound before anything else starts, so a port in use
is a clear error at start rather than a log line from a server that never came up.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Protocol

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import ConfigurationError


class Health(Protocol):
    """What the endpoint asks of a runner (implemented by `flowline.runtime.probe.Probe`)."""

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the process can do its work, and a body naming each dependency and loop."""

    async def sample(self) -> None:
        """Refresh the gauges read from the servers (cached: cheap to call on every scrape)."""


class _Metrics:
    """prometheus-client's own ASGI app, after the server gauges are refreshed."""

    def __init__(self, health: Health, registry: CollectorRegistry) -> None:
        self._health = health
        self._inner = make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._health.sample()
        await self._inner(scope, receive, send)


def asgi_app(health: Health, registry: CollectorRegistry) -> Starlette:
    """The endpoint as an ASGI app: mount it in your own (``app.mount("/flowline", ...)``).

    - ``GET /metrics``: Prometheus exposition (text, or OpenMetrics when asked).
    - ``GET /healthz``: 200 while the event loop answers.
    - ``GET /readyz``: 200 when NATS, Redis and every loop are fine, else 503; the JSON body
      says which is which either way.
    """

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        ready, body = await health.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    return Starlette(
        routes=[
            Route("/metrics", _Metrics(health, registry)),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


class HttpEndpoint:
    """Serves an ASGI app on `host`:`port` in the running event loop.

    Raises:
        ConfigurationError: from `bind`, when the address cannot be listened on.
    """

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where it listens (with the real port once bound, if 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> None:
        """Bind and listen now, so every address problem surfaces before the runner starts."""
        where = f"{self.host}:{self.port}"
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConfigurationError(
                f"cannot serve HTTP on {where}: unknown host ({exc.strerror})"
            ) from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            # Lets a restarted worker rebind at once; a live listener still refuses a second.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            reason = {
                errno.EADDRINUSE: "the port is in use",
                errno.EADDRNOTAVAIL: "no such address on this machine",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise ConfigurationError(f"cannot serve HTTP on {where}: {reason}") from None
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock

    async def start(self) -> None:
        """Start serving on the bound socket (binding first if `bind` was not called)."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        config.load()
        # uvicorn's own steps, without `serve()`: it would take over SIGTERM and SIGINT, which
        # belong to the runner's graceful shutdown.
        server = self._server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._task = asyncio.create_task(server.main_loop(), name="http-endpoint")

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (about a second at most), close."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            await self._server.shutdown(sockets=[self._sock] if self._sock else None)
            self._server = self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
