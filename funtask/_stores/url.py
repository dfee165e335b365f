"""Store URLs: ``memory``, ``sqlite:…``, ``redis://…`` and friends (SPEC section 5).

:func:`parse_store_url` turns the ``store=`` setting (or ``$FUNTASK_STORE``)
into a :class:`StoreURL`, or raises :class:`ValueError` naming what it got.
The password is kept out of ``repr`` and of :attr:`StoreURL.display`
(``redis://user:***@host``), which is the only form logs, errors and
``/health`` may show.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote

__all__ = [
    "DEFAULT_REDIS_PORT",
    "ENV_STORE",
    "SSL_QUERY_PARAMS",
    "StoreKind",
    "StoreURL",
    "parse_store_url",
]

ENV_STORE: Final = "FUNTASK_STORE"
DEFAULT_REDIS_PORT: Final = 6379
SSL_QUERY_PARAMS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

StoreKind = Literal["memory", "sqlite", "redis"]

_REDIS_SCHEMES: Final = {
    # scheme: (tls, cluster)
    "redis": (False, False),
    "rediss": (True, False),
    "redis+cluster": (False, True),
    "rediss+cluster": (True, True),
}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.

    ``path`` is set for SQLite (absolute, percent-decoded); ``hosts``,
    ``db``, ``username``, ``password``, ``tls``, ``cluster`` and the three
    ``ssl_*`` files for Redis. ``display`` is the redacted form to show.
    """

    kind: StoreKind
    scheme: str
    display: str
    path: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    cluster: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __str__(self) -> str:
        return self.display

    @property
    def persistent(self) -> bool:
        """Whether results outlive the process (everything but ``memory``)."""
        return self.kind != "memory"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``rediss``: the default context, hostnames checked.

        Returns None without TLS. Loading the files may raise :class:`OSError`
        or :class:`ssl.SSLError`.
        """
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_certs)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.ssl_certfile is not None:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


MEMORY: Final = StoreURL(kind="memory", scheme="memory", display="memory")


def parse_store_url(value: object, *, cwd: str | None = None) -> StoreURL:
    """Parse a store URL; relative SQLite paths are resolved against ``cwd`` (default: now).

    Raises:
        ValueError: the URL is not one funtask accepts; the message names it
            (with any password redacted).
    """
    if isinstance(value, StoreURL):
        return value
    if not isinstance(value, str):
        raise ValueError(f"store must be a str, not {value!r}")
    text = value.strip()
    if text == "memory":
        return MEMORY
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme:
        raise ValueError(
            f"store {value!r} is not a store URL (expected 'memory', 'sqlite:…' or 'redis://…')"
        )
    if scheme == "sqlite":
        return _parse_sqlite(value, rest, cwd)
    if scheme in _REDIS_SCHEMES:
        return _parse_redis(value, scheme, rest)
    shown = value if "@" not in value else f"{scheme}:…"
    raise ValueError(
        f"store {shown!r} has an unknown scheme {scheme!r} "
        "(expected memory, sqlite, redis, rediss, redis+cluster or rediss+cluster)"
    )


def _parse_sqlite(value: str, rest: str, cwd: str | None) -> StoreURL:
    if "?" in rest or "#" in rest:
        raise ValueError(f"sqlite store {value!r} must not have a query string or fragment")
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority:
            raise ValueError(
                f"sqlite store {value!r} must not name a host {authority!r} "
                "(use sqlite:///abs/path.db or sqlite:rel/path.db)"
            )
        path = slash + path
    else:
        path = rest
    path = unquote(path)
    if not path or path.endswith("/"):
        raise ValueError(f"sqlite store {value!r} must name a database file")
    if path == ":memory:" or path.startswith("file:") or "\x00" in path:
        raise ValueError(f"sqlite store {value!r} must name a file on disk, not {path!r}")
    if not os.path.isabs(path):
        path = os.path.join(cwd if cwd is not None else os.getcwd(), path)
    path = os.path.normpath(path)
    return StoreURL(kind="sqlite", scheme="sqlite", display=f"sqlite://{path}", path=path)


def _parse_redis(value: str, scheme: str, rest: str) -> StoreURL:
    tls, cluster = _REDIS_SCHEMES[scheme]
    if not rest.startswith("//"):
        raise ValueError(f"redis store {_redact_raw(value)!r} must look like {scheme}://host")
    rest = rest[2:]
    if "#" in rest:
        raise ValueError(f"redis store {_redact_raw(value)!r} must not have a fragment")
    rest, _, query = rest.partition("?")
    netloc, slash, db_text = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, has_password, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if has_password else None
        if password == "":
            password = None
    hosts = tuple(_parse_host(value, part) for part in hostlist.split(","))
    if len(hosts) > 1 and not cluster:
        raise ValueError(
            f"redis store {_redact_raw(value)!r} names several hosts; "
            f"only {scheme}+cluster:// takes a list"
        )
    db = 0
    if db_text:
        if not db_text.isdigit() or not db_text.isascii():
            raise ValueError(
                f"redis store {_redact_raw(value)!r} has an invalid database {db_text!r}"
            )
        db = int(db_text)
        if cluster and db != 0:
            raise ValueError(
                f"redis store {_redact_raw(value)!r}: Redis Cluster has only database 0"
            )
    files: dict[str, str] = {}
    if query:
        for key, item in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if key not in SSL_QUERY_PARAMS:
                raise ValueError(
                    f"redis store {_redact_raw(value)!r} has an unknown query parameter "
                    f"{key!r} (accepted: {', '.join(SSL_QUERY_PARAMS)})"
                )
            if not tls:
                raise ValueError(
                    f"redis store {_redact_raw(value)!r}: {key} needs TLS "
                    f"({scheme.replace('redis', 'rediss', 1)}://)"
                )
            if not item:
                raise ValueError(f"redis store {_redact_raw(value)!r}: {key} is empty")
            files[key] = item
    shown_hosts = ",".join(_format_host(host, port) for host, port in hosts)
    shown_user = ""
    if username is not None or password is not None:
        shown_user = (username or "") + (":***" if password is not None else "") + "@"
    display = f"{scheme}://{shown_user}{shown_hosts}"
    if db_text:
        display += f"/{db}"
    elif slash:
        display += "/"
    if files:
        display += "?" + "&".join(f"{k}={v}" for k, v in files.items())
    return StoreURL(
        kind="redis",
        scheme=scheme,
        display=display,
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        tls=tls,
        cluster=cluster,
        ssl_ca_certs=files.get("ssl_ca_certs"),
        ssl_certfile=files.get("ssl_certfile"),
        ssl_keyfile=files.get("ssl_keyfile"),
    )


def _parse_host(value: str, part: str) -> tuple[str, int]:
    if part.startswith("["):
        host, bracket, port_text = part[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"redis store {_redact_raw(value)!r} has an invalid host {part!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"redis store {_redact_raw(value)!r} names no host")
    port = DEFAULT_REDIS_PORT
    if port_text:
        if not port_text.isdigit() or not port_text.isascii() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"redis store {_redact_raw(value)!r} has an invalid port {port_text!r}"
            )
        port = int(port_text)
    return unquote(host), port


def _format_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redact_raw(value: str) -> str:
    """``value`` with any password between ``://user:`` and ``@`` replaced by ``***``."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    netloc_end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            netloc_end = min(netloc_end, index)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return value
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{hosts}{tail}"
