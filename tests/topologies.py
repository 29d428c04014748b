"""Clustered servers on loopback for the scale-out tests: a three-node NATS cluster, and a Redis
primary with a replica watched by three Sentinels.

Each is a context manager owning its processes and a temporary directory; nodes can be
SIGKILLed and started again on the same ports and data, as an outage would leave them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from flowline.servers import _wait_for_port, free_port, nats_server_binary, redis_server_binary


def _spawn(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child keeps writing to it
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    finally:
        out.close()


def _stop(proc: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.kill() if kill else proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class NatsCluster:
    """Three nats-server nodes with JetStream, routed to each other on loopback."""

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flowline-nats-cluster-"))
        self.ports = [free_port() for _ in range(size)]
        self.routes = [free_port() for _ in range(size)]
        self.monitors = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """The seed list: every node, comma-separated, as ``FLOWLINE_NATS_URL`` takes it."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def name(self, i: int) -> str:
        return f"n{i}"

    def start_node(self, i: int) -> None:
        store = self.dir / self.name(i)
        store.mkdir(exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
        args = [
            nats_server_binary(),
            *("-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.ports[i])),
            *("-n", self.name(i), "--cluster_name", "flowline", "-m", str(self.monitors[i])),
            *("-cluster", f"nats://127.0.0.1:{self.routes[i]}", "-routes", routes),
        ]
        log = self.dir / f"{self.name(i)}.log"
        self.procs[i] = _spawn(args, log, self.dir)
        _wait_for_port(self.ports[i], self.procs[i], f"nats-server {self.name(i)}", log)  # type: ignore[arg-type]

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every running node says JetStream is current (its meta leader known, its
        streams caught up): nats-server's own /healthz."""
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            url = f"http://127.0.0.1:{self.monitors[i]}/healthz"
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name(i)} not healthy:\n{self.log(i)[-2000:]}")
                time.sleep(0.1)

    def kill_node(self, i: int) -> None:
        _stop(self.procs[i], kill=True)
        self.procs[i] = None

    def index(self, name: str) -> int:
        return [self.name(i) for i in range(len(self.ports))].index(name)

    def log(self, i: int) -> str:
        return (self.dir / f"{self.name(i)}.log").read_text(errors="replace")

    def __enter__(self) -> NatsCluster:
        for i in range(len(self.ports)):
            self.start_node(i)
        self.wait_healthy()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            _stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisSentinels:
    """A Redis primary and one replica, watched by three Sentinels (quorum 2) that fail over
    one second after the primary stops answering.

    Each Sentinel is ``redis-server CONF --sentinel``: the same binary (Debian's
    ``redis-sentinel`` package only adds a symlink and a service), so the tests need nothing
    beyond redis-server."""

    SERVICE = "flowline"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flowline-sentinel-"))
        self.data_ports = [free_port(), free_port()]  # [0] starts as primary, [1] as replica
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.data: list[subprocess.Popen[bytes] | None] = [None, None]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL naming every Sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start_data(self, i: int, *, replica_of: int | None = None) -> None:
        port = self.data_ports[i]
        args = [
            redis_server_binary(),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
            *("--dbfilename", f"dump-{i}.rdb", "--appendonly", "no", "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no", "--repl-diskless-sync-delay", "0"),
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.data_ports[replica_of])]
        log = self.dir / f"redis-{i}.log"
        self.data[i] = _spawn(args, log, self.dir)
        _wait_for_port(port, self.data[i], f"redis-server {i}", log)  # type: ignore[arg-type]

    def kill_data(self, i: int) -> None:
        _stop(self.data[i], kill=True)
        self.data[i] = None

    def _start_sentinel(self, i: int) -> None:
        conf = self.dir / f"sentinel-{i}.conf"
        conf.write_text(
            f"port {self.sentinel_ports[i]}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.data_ports[0]} 2\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
            f"sentinel failover-timeout {self.SERVICE} 10000\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n"
        )
        log = self.dir / f"sentinel-{i}.log"
        proc = _spawn([redis_server_binary(), str(conf), "--sentinel"], log, self.dir)
        self.sentinels.append(proc)
        _wait_for_port(self.sentinel_ports[i], proc, f"Sentinel {i}", log)

    def primary_port(self) -> int:
        """The port the Sentinels name as the primary now."""
        import redis

        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    _, p = client.sentinel_get_master_addr_by_name(self.SERVICE)
                    return int(p)
                finally:
                    client.close()
        raise AssertionError("no Sentinel answers")

    def wait_replicated(self, timeout: float = 15) -> None:
        """Until the replica has caught up with the primary's offset."""
        import redis

        primary = redis.Redis(port=self.primary_port())
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                info = primary.info("replication")
                slaves = [v for k, v in info.items() if k.startswith("slave")]
                if slaves and all(
                    s["state"] == "online" and s["offset"] == info["master_repl_offset"]
                    for s in slaves
                ):
                    return
                time.sleep(0.05)
        finally:
            primary.close()
        raise AssertionError("the replica did not catch up")

    def __enter__(self) -> RedisSentinels:
        self.start_data(0)
        self.start_data(1, replica_of=0)
        for i in range(3):
            self._start_sentinel(i)
        self.wait_replicated()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.sentinels, *self.data]:
            _stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
