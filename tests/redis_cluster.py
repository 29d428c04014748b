"""A local three-primary Redis Cluster on free loopback ports, and its pytest fixtures.

    with LocalCluster() as cluster:
        settings = Settings(redis_url=cluster.url)   # redis+cluster://127.0.0.1:p1,...

`LocalCluster(tls=True, password=...)` serves TLS only (``rediss+cluster://``), its nodes'
self-signed certificate in `ca_file`.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from flowline.servers import redis_server_binary

NODE_OPTIONS = (
    *("--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
    *("--cluster-node-timeout", "2000", "--appendonly", "yes", "--appendfsync", "always"),
    *("--save", ""),
)
REPLICAS = ("--cluster-replicas", "0", "--cluster-yes")


def make_certificate(directory: Path) -> None:
    """A throwaway self-signed certificate for 127.0.0.1: cert.pem and key.pem."""
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too; both under 65536."""
    for _ in range(100):
        port = random.randint(20000, 50000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports for a cluster node")


class LocalCluster:
    """Three ``redis-server --cluster-enabled yes`` primaries (AOF, ``appendfsync always``, no
    replicas), their 16384 slots split by ``redis-cli --cluster create``."""

    def __init__(self, primaries: int = 3, *, tls: bool = False, password: str | None = None):
        self.tls, self.password = tls, password
        self.dir = Path(tempfile.mkdtemp(prefix="flowline-cluster-"))
        self.ports: list[int] = []
        while len(self.ports) < primaries:
            port = cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        cred = f":{self.password}@" if self.password else ""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"{'rediss' if self.tls else 'redis'}+cluster://{cred}{nodes}"

    @property
    def ca_file(self) -> str | None:
        """The certificate clients must trust (`tls`: the nodes' own, self-signed)."""
        return str(self.dir / "cert.pem") if self.tls else None

    def client(self, port: int) -> SyncRedis:
        """A plain client of one node."""
        if self.tls:
            return SyncRedis(port=port, password=self.password, ssl=True, ssl_ca_certs=self.ca_file)
        return SyncRedis(port=port, password=self.password)

    def _security(self, port: int) -> list[str]:
        """A node's options for `password` and `tls` (TLS on its port and its cluster bus)."""
        args = (
            ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        )
        if not self.tls:
            return ["--port", str(port), *args]
        cert, key = str(self.dir / "cert.pem"), str(self.dir / "key.pem")
        return [
            *("--port", "0", "--tls-port", str(port), "--tls-cluster", "yes"),
            *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert),
            *("--tls-auth-clients", "no", *args),
        ]

    def _cli_security(self) -> list[str]:
        args = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return [*args, "--tls", "--cacert", str(self.dir / "cert.pem")] if self.tls else args

    def __enter__(self) -> LocalCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        try:
            if self.tls:
                make_certificate(self.dir)
            for port in self.ports:
                self._start(port)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, *REPLICAS, *self._cli_security()],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self._wait_ok()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, port: int) -> None:
        data = self.dir / str(port)
        data.mkdir()
        log = open(data / "redis.log", "wb")  # noqa: SIM115 - the server's, closed with it
        proc = subprocess.Popen(
            [redis_server_binary(), *self._security(port), "--dir", str(data), *NODE_OPTIONS],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(Exception), self.client(port) as r:
                if r.ping():
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start:\n{self._log(port)}")
            time.sleep(0.05)

    def _log(self, port: int) -> str:
        return (self.dir / str(port) / "redis.log").read_text(errors="replace")[-2000:]

    def _wait_ok(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows all the others."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = []
            for port in self.ports:
                with self.client(port) as r:
                    info = r.cluster("INFO")
                    states.append(
                        info["cluster_state"] == "ok"
                        and int(info["cluster_known_nodes"]) == len(self.ports)
                    )
            if all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("cluster_state did not become ok within 30 s")

    def owner(self, slot: int) -> int:
        """The port of the primary that serves `slot`."""
        with self.client(self.ports[0]) as r:
            for start, end, primary, *_ in r.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        raise LookupError(slot)

    def keys_by_port(self, pattern: str = "flowline:*") -> dict[int, set[str]]:
        """Every key matching `pattern`, by the port of the primary that holds it."""
        out = {}
        for port in self.ports:
            with self.client(port) as r:
                out[port] = {k.decode() for k in r.scan_iter(match=pattern, count=1000)}
        return out

    def command_calls(self, name: str) -> int:
        """How many times the primaries ran command `name` (``command|getkeys``) since the
        last `flush`."""
        total = 0
        for port in self.ports:
            with self.client(port) as r:
                stats = r.info("commandstats")
                total += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        return total

    def flush(self) -> None:
        """Empty every primary and reset its command counts."""
        for port in self.ports:
            with self.client(port) as r:
                r.flushall()
                r.config_resetstat()

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_servers() -> Iterator[LocalCluster]:
    """The session's cluster (started at the first test that asks for it)."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[LocalCluster]:
    """A second cluster, with a password and TLS only (started when a test asks for it)."""
    with LocalCluster(tls=True, password="s3cret-cluster") as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(cluster_servers: LocalCluster) -> LocalCluster:
    """The session's cluster, emptied for this test."""
    cluster_servers.flush()
    return cluster_servers


@pytest.fixture
async def cluster_redis(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A plain redis-py cluster client of the (emptied) cluster, for a test's own reads."""
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in redis_cluster.ports])
    yield client
    await client.aclose()
