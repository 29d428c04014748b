"""Settings: read from arguments or the environment, checked, and never showing a secret."""

from __future__ import annotations

import pytest

from flowline import ConfigurationError, Settings
from flowline._settings import (
    DEFAULT_NATS_URL,
    DEFAULT_REDIS_URL,
    cluster_nodes,
    is_cluster_url,
    redact,
)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FLOWLINE_* variables from the calling shell."""
    monkeypatch.delenv("FLOWLINE_NATS_URL", raising=False)
    monkeypatch.delenv("FLOWLINE_REDIS_URL", raising=False)
    return monkeypatch


class TestFromEnv:
    def test_defaults_without_environment(self, no_env: pytest.MonkeyPatch) -> None:
        """With nothing set, the servers are on localhost's default ports."""
        settings = Settings.from_env()
        assert (settings.nats_url, settings.redis_url) == (DEFAULT_NATS_URL, DEFAULT_REDIS_URL)
        assert (DEFAULT_NATS_URL, DEFAULT_REDIS_URL) == (
            "nats://127.0.0.1:4222",
            "redis://127.0.0.1:6379/0",
        )

    def test_reads_environment(self, no_env: pytest.MonkeyPatch) -> None:
        """FLOWLINE_NATS_URL and FLOWLINE_REDIS_URL are read."""
        no_env.setenv("FLOWLINE_NATS_URL", "nats://n1:4222,nats://n2:4222")
        no_env.setenv("FLOWLINE_REDIS_URL", "rediss://cache:6380/2")
        settings = Settings.from_env()
        assert (settings.nats_url, settings.redis_url) == (
            "nats://n1:4222,nats://n2:4222",
            "rediss://cache:6380/2",
        )

    def test_overrides_win(self, no_env: pytest.MonkeyPatch) -> None:
        """Keyword overrides win over the environment; None overrides are ignored."""
        no_env.setenv("FLOWLINE_NATS_URL", "nats://env:4222")
        no_env.setenv("FLOWLINE_REDIS_URL", "redis://env:6379/0")
        settings = Settings.from_env(redis_url="redis://arg:6379/1", nats_url=None, grace=2.0)
        assert (settings.nats_url, settings.redis_url, settings.grace) == (
            "nats://env:4222",
            "redis://arg:6379/1",
            2.0,
        )

    def test_bad_environment_is_a_configuration_error(self, no_env: pytest.MonkeyPatch) -> None:
        """A bad URL in the environment fails at once, with its password hidden."""
        no_env.setenv("FLOWLINE_REDIS_URL", "http://admin:hunter2@cache:6379")
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env()
        assert str(info.value) == "not a Redis URL: 'http://admin:***@cache:6379'"


class TestValidation:
    @pytest.mark.parametrize(
        "url", ["nats://h:4222", "tls://h:4222", "ws://h:8080", "wss://h:443", "nats://a,nats://b"]
    )
    def test_nats_schemes(self, url: str) -> None:
        """nats, tls, ws and wss URLs are accepted, also comma-separated."""
        assert Settings(nats_url=url).nats_url == url

    @pytest.mark.parametrize(
        "url", ["redis://h:6379/0", "rediss://h:6380", "unix:///run/redis.sock"]
    )
    def test_redis_schemes(self, url: str) -> None:
        """redis, rediss and unix URLs are accepted."""
        assert Settings(redis_url=url).redis_url == url

    @pytest.mark.parametrize(
        ("url", "nodes", "user", "password"),
        [
            ("redis+cluster://h1:7000,h2:7001", [("h1", 7000), ("h2", 7001)], None, None),
            ("rediss+cluster://:pw@h1", [("h1", 6379)], None, "pw"),
            (
                "redis+cluster://u:p%40ss@h1:7000,[::1]:7001/0",
                [("h1", 7000), ("::1", 7001)],
                "u",
                "p@ss",
            ),
        ],
    )
    def test_redis_cluster_urls(
        self, url: str, nodes: list[tuple[str, int]], user: str | None, password: str | None
    ) -> None:
        """redis+cluster and rediss+cluster URLs list startup nodes, with optional credentials."""
        assert Settings(redis_url=url).redis_url == url
        assert is_cluster_url(url)
        assert cluster_nodes(url) == (nodes, user, password)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("redis+cluster://u:hunter2@h:99999", "bad port in 'redis+cluster://u:***@h:99999'"),
            ("redis+cluster://h:1,,h:2", "no host in Redis Cluster URL 'redis+cluster://h:1,,h:2'"),
            (
                "redis+cluster://h:1/2",
                "a Redis Cluster has database 0 only: 'redis+cluster://h:1/2'",
            ),
            (
                "redis+cluster://:pw@h:1?ssl_cert_reqs=none",
                "options in a Redis Cluster URL are not read; pass them as "
                "Settings(redis_options=...): 'redis+cluster://:***@h:1?ssl_cert_reqs=none'",
            ),
        ],
    )
    def test_bad_redis_cluster_url(self, url: str, message: str) -> None:
        """A cluster URL with a bad node list, a database number or options is refused in one
        line (options would be silently ignored)."""
        with pytest.raises(ConfigurationError) as info:
            Settings(redis_url=url)
        assert str(info.value) == message

    def test_tls_ca_applies_to_rediss_cluster(self) -> None:
        """The CA file is passed for rediss+cluster:// as for rediss://, not for redis+cluster."""
        tls = Settings(redis_url="rediss+cluster://h:1", tls_ca="/ca.pem")
        assert tls.redis_connect_options() == {"ssl_ca_certs": "/ca.pem"}
        assert (
            Settings(redis_url="redis+cluster://h:1", tls_ca="/ca.pem").redis_connect_options()
            == {}
        )

    def test_bad_redis_scheme_hides_password(self) -> None:
        """A non-Redis URL is refused; the message shows it without its password."""
        with pytest.raises(ConfigurationError) as info:
            Settings(redis_url="http://admin:hunter2@cache:6379/0")
        assert str(info.value) == "not a Redis URL: 'http://admin:***@cache:6379/0'"
        assert "hunter2" not in repr(info.value)

    def test_bad_nats_scheme_in_a_list_hides_password(self) -> None:
        """The one bad URL of a NATS list is named, its password hidden."""
        with pytest.raises(ConfigurationError) as info:
            Settings(nats_url="nats://n1:4222, http://user:s3cret@n2:4222")
        assert str(info.value) == "not a NATS URL: 'http://user:***@n2:4222'"
        assert "s3cret" not in str(info.value)

    @pytest.mark.parametrize("url", ["127.0.0.1:6379", "localhost", ""])
    def test_url_without_scheme(self, url: str) -> None:
        """A host without a scheme is refused rather than guessed."""
        with pytest.raises(ConfigurationError, match="not a Redis URL"):
            Settings(redis_url=url)

    def test_out_of_range_port_is_a_configuration_error(self) -> None:
        """A URL with an impossible port is refused at once, its password still hidden."""
        with pytest.raises(ConfigurationError) as info:
            Settings(redis_url="redis://admin:hunter2@cache:99999/0")
        assert "hunter2" not in str(info.value)

    def test_negative_grace(self) -> None:
        """grace below zero is refused."""
        with pytest.raises(ConfigurationError) as info:
            Settings(grace=-1)
        assert str(info.value) == "grace must be >= 0 seconds"

    def test_zero_concurrency(self) -> None:
        """concurrency below one is refused."""
        with pytest.raises(ConfigurationError) as info:
            Settings(concurrency=0)
        assert str(info.value) == "concurrency must be >= 1"

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed after they were checked."""
        with pytest.raises(AttributeError):
            Settings().redis_url = "http://nope"  # type: ignore[misc]


class TestRedaction:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://admin:hunter2@cache:6379/0", "redis://admin:***@cache:6379/0"),
            ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
            ("nats://s3cret-token@n1:4222", "nats://***@n1:4222"),
            (
                "rediss://u:p@cache/3?ssl_cert_reqs=none",
                "rediss://u:***@cache/3?ssl_cert_reqs=none",
            ),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
        ],
    )
    def test_single_url(self, url: str, shown: str) -> None:
        """Passwords and tokens become ``***``; everything else is kept."""
        assert redact(url) == shown

    def test_comma_separated_urls(self) -> None:
        """Each URL of a NATS list is redacted."""
        assert redact("nats://tok1@n1:4222,nats://u:pw@n2:4222,nats://n3:4222") == (
            "nats://***@n1:4222,nats://u:***@n2:4222,nats://n3:4222"
        )

    def test_cluster_url(self) -> None:
        """A cluster URL's password is hidden, even one with a comma in it; nodes are kept."""
        assert redact("redis+cluster://u:hunter2@h1:7000,h2:7001") == (
            "redis+cluster://u:***@h1:7000,h2:7001"
        )
        assert redact("rediss+cluster://:a,b@h1:7000,h2:7001") == (
            "rediss+cluster://:***@h1:7000,h2:7001"
        )

    def test_malformed_port_still_redacts(self) -> None:
        """A URL with a bad port is still shown, password hidden, rather than raising."""
        assert redact("redis://admin:hunter2@cache:99999/0") == "redis://admin:***@cache:99999/0"

    def test_ipv6_host_kept_as_written(self) -> None:
        """An IPv6 host keeps its brackets, so the shown URL still means the same server."""
        assert redact("redis://:hunter2@[::1]:6379/0") == "redis://:***@[::1]:6379/0"

    def test_repr_never_shows_passwords(self) -> None:
        """`repr(Settings)` (what ends up in logs) shows URLs without secrets."""
        settings = Settings(
            nats_url="nats://tok@n1:4222,nats://u:natspw@n2:4222",
            redis_url="redis://admin:hunter2@cache:6379/0",
            redis_options={"password": "other-secret"},
        )
        text = repr(settings)
        assert text == (
            "Settings(nats_url='nats://***@n1:4222,nats://u:***@n2:4222', "
            "redis_url='redis://admin:***@cache:6379/0')"
        )
        assert str(settings) == text
        for secret in ("tok", "natspw", "hunter2", "other-secret"):
            assert secret not in text


def test_waiting_for_replicas_is_refused_on_a_cluster_url():
    with pytest.raises(ConfigurationError, match="redis_wait_replicas is not supported on a Redis"):
        Settings(redis_url="redis+cluster://127.0.0.1:7000", redis_wait_replicas=1)
