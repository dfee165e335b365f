"""Store URL parsing (SPEC section 5): every scheme, redaction, the ssl query params."""

from __future__ import annotations

import os
import re
import ssl

import pytest

from funtask._stores.url import parse_store_url


def test_memory() -> None:
    url = parse_store_url("memory")
    assert url.kind == "memory"
    assert not url.persistent
    assert str(url) == "memory"


def test_sqlite_absolute_and_relative(tmp_path: os.PathLike[str]) -> None:
    url = parse_store_url("sqlite:///var/lib/funtask/jobs.db")
    assert (url.kind, url.path) == ("sqlite", "/var/lib/funtask/jobs.db")
    assert url.display == "sqlite:///var/lib/funtask/jobs.db"
    rel = parse_store_url("sqlite:data/jobs.db", cwd="/srv/app")
    assert rel.path == "/srv/app/data/jobs.db"
    assert parse_store_url("sqlite:/abs/x.db").path == "/abs/x.db"
    assert parse_store_url("sqlite:///a%20b/x.db").path == "/a b/x.db"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sqlite://host/x.db", "must not name a host 'host'"),
        ("sqlite:///x.db?mode=ro", "query string"),
        ("sqlite::memory:", "':memory:'"),
        ("sqlite:", "must name a database file"),
        ("sqlite:///dir/", "must name a database file"),
        ("postgres://db/x", "unknown scheme 'postgres'"),
        ("nonsense", "is not a store URL"),
        ("redis:host", "must look like redis://host"),
        ("redis://", "names no host"),
        ("redis://h:99999", "invalid port '99999'"),
        ("redis://h/x", "invalid database 'x'"),
        ("redis://a:1,b:2", "names several hosts"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("rediss://h?foo=1", "unknown query parameter 'foo'"),
        ("redis://h?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS"),
    ],
)
def test_refused(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_store_url(value)


def test_refused_non_str() -> None:
    with pytest.raises(ValueError, match="store must be a str, not 5"):
        parse_store_url(5)


def test_redis_full() -> None:
    url = parse_store_url("redis://us%40er:p%3Ass%2Fw@cache.local:6380/2")
    assert url.kind == "redis"
    assert (url.username, url.password) == ("us@er", "p:ss/w")
    assert url.hosts == (("cache.local", 6380),)
    assert url.db == 2
    assert not url.tls and not url.cluster
    assert url.display == "redis://us@er:***@cache.local:6380/2"
    assert "p:ss/w" not in repr(url)
    assert "p%3Ass" not in repr(url)


def test_redis_defaults_and_password_only() -> None:
    url = parse_store_url("redis://:secret@h")
    assert url.username is None
    assert url.password == "secret"
    assert url.hosts == (("h", 6379),)
    assert url.display == "redis://:***@h:6379"
    assert parse_store_url("redis://user@h").display == "redis://user@h:6379"


def test_redis_cluster_and_ipv6() -> None:
    url = parse_store_url("rediss+cluster://u:pw@[::1]:7000,node2:7001")
    assert url.cluster and url.tls
    assert url.hosts == (("::1", 7000), ("node2", 7001))
    assert url.display == "rediss+cluster://u:***@[::1]:7000,node2:7001"


def test_redis_error_redacts_password() -> None:
    with pytest.raises(ValueError, match=re.escape("u:***@h:port")) as info:
        parse_store_url("redis://u:topsecret@h:port")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ValueError, match="unknown scheme") as other:
        parse_store_url("mongodb://u:topsecret@h")
    assert "topsecret" not in str(other.value)


def test_rediss_ssl_params_and_context(tmp_path: os.PathLike[str]) -> None:
    url = parse_store_url(
        "rediss://h:6380?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert url.tls
    assert (url.ssl_ca_certs, url.ssl_certfile, url.ssl_keyfile) == (
        "/etc/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    context = parse_store_url("rediss://h").ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert parse_store_url("redis://h").ssl_context() is None
