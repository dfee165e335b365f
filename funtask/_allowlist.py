"""Callback URL allowlist: parsing, normalisation and matching.

A worker may POST a job's result to a caller-supplied ``callbackUrl``.  That URL
is only used when it matches one of the configured allowlist entries (origins,
optionally with a path prefix).  Both the entries and the callback URL are
parsed strictly according to RFC 3986 (no WHATWG leniency: backslashes,
whitespace, control and non-ASCII characters make a URL invalid) and then
normalised:

* scheme and host are lowercased, a trailing dot on the host is removed;
* default ports (80 for http, 443 for https) are dropped, other ports kept;
* IPv6 literals are kept in brackets in their canonical (compressed) form;
* percent-encoded unreserved characters are decoded and the hex digits of the
  remaining escapes uppercased (``%2F`` stays ``%2F``: it never becomes a path
  separator);
* dot segments are removed (RFC 3986 section 5.2.4) and an empty path becomes ``/``;
* the query is kept exactly as given and the fragment is dropped.

The normalised URL is the one the library calls.  A callback URL is allowed when
its scheme, host and port equal an entry's and, when the entry has a path
prefix, its path equals the prefix or continues it after a ``/``.  As a defence
against servers that decode ``%2F``/``%5C``, strip ``;`` parameters, merge ``//``
or apply Unicode normalisation before routing, a path under a prefix is also
refused if such a reading of it contains a dot segment or leaves the prefix.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "Allowlist",
    "Origin",
    "normalize_url",
    "parse_allowlist_entry",
    "redact_url",
]

#: Schemes a callback may use, with their default ports.
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

#: RFC 3986 ``unreserved`` characters (decoded when percent-encoded).
_UNRESERVED: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)

#: Every character that may appear literally in an RFC 3986 URI (plus ``%``).
_URI_CHARS: Final = _UNRESERVED | frozenset(":/?#[]@!$&'()*+,;=%")

#: RFC 3986 appendix B: split a URI reference into its five components.
_URI_RE: Final = re.compile(
    r"(?:(?P<scheme>[^:/?#]+):)?(?://(?P<authority>[^/?#]*))?"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?",
    re.DOTALL,
)

#: A syntactically valid scheme.
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")

#: A percent sign that does not start a ``%XX`` escape.
_BAD_PERCENT_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")

#: A ``%XX`` escape.
_PERCENT_RE: Final = re.compile(r"%([0-9A-Fa-f]{2})")

#: Characters allowed literally in a path (``pchar`` and ``/``).
_PATH_RE: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")

#: One (lowercased) DNS-style host label; ``_`` is tolerated for internal names.
_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")

#: Upper bound on the number of repeated percent-decodings in the strict path view.
_MAX_DECODE_ROUNDS: Final = 4


class _InvalidURL(Exception):
    """Internal: a URL failed validation; ``args[0]`` completes an error message."""


class _Parsed(NamedTuple):
    """Internal: the normalised components of a valid absolute http(s) URL."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str | None
    fragment: str | None


@dataclass(frozen=True)
class Origin:
    """A normalised allowlist entry: scheme, host, non-default port and optional path prefix."""

    scheme: str
    host: str
    port: int | None = None
    path_prefix: str = ""

    def __str__(self) -> str:
        """Return the entry as a normalised URL string (``https://host:port/prefix``)."""
        return _origin_string(self.scheme, self.host, self.port) + self.path_prefix

    def matches(self, url: str) -> bool:
        """Return whether the absolute URL ``url`` (normalised first) is covered by this entry."""
        try:
            parsed = _parse(url)
        except _InvalidURL:
            return False
        return self._matches_parsed(parsed)

    def _matches_parsed(self, parsed: _Parsed) -> bool:
        """Return whether the normalised components ``parsed`` are covered by this entry."""
        if (parsed.scheme, parsed.host, parsed.port) != (self.scheme, self.host, self.port):
            return False
        prefix = self.path_prefix
        if not prefix:
            return True
        if not _under_prefix(parsed.path, prefix):
            return False
        # The normalised path has no dot segments; one that appears under a lenient reading
        # (decoded %2F or %2E, "..;", fullwidth dots, ...) is an attempt to escape the prefix.
        segments = _lenient_segments(parsed.path)
        if segments is None or any(segment in (".", "..") for segment in segments):
            return False
        prefix_segments = _lenient_segments(prefix)
        return prefix_segments is None or segments[: len(prefix_segments)] == prefix_segments


def _origin_string(scheme: str, host: str, port: int | None) -> str:
    """Return ``scheme://host[:port]``."""
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def _under_prefix(path: str, prefix: str) -> bool:
    """Return whether ``path`` equals ``prefix`` or continues it after a ``/``."""
    return path == prefix or path.startswith(prefix + "/")


def _check_characters(url: str) -> None:
    """Raise :class:`_InvalidURL` if ``url`` contains characters not allowed in a URI."""
    if not url:
        raise _InvalidURL("is empty")
    for char in url:
        if char not in _URI_CHARS:
            if char.isspace() or unicodedata.category(char)[0] in "CZ":
                raise _InvalidURL("contains whitespace or control characters")
            raise _InvalidURL(f"contains a character not allowed in a URL ({char!r})")
    if _BAD_PERCENT_RE.search(url):
        raise _InvalidURL("has invalid percent-encoding")


def _normalize_host(host: str) -> str:
    """Return the normalised ``host`` (lowercase, no trailing dot, canonical IPv6 in brackets)."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise _InvalidURL("has an invalid host")
        literal = host[1:-1]
        # Zone identifiers and IPvFuture literals are not supported; IPv4 belongs unbracketed.
        if "%" in literal or ":" not in literal or literal[:1] in ("v", "V"):
            raise _InvalidURL("has an invalid host")
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            raise _InvalidURL("has an invalid host") from None
        if address.ipv4_mapped is not None:  # one spelling on every Python version
            return f"[::ffff:{address.ipv4_mapped}]"
        return f"[{address.compressed}]"
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise _InvalidURL("must include a host")
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise _InvalidURL("has an invalid host")
    return host


def _parse_port(text: str, scheme: str) -> int | None:
    """Return the port in ``text`` (``None`` when empty or the scheme's default)."""
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > 5:
        raise _InvalidURL("has an invalid port")
    port = int(text.lstrip("0") or "0")
    if not 0 < port <= 65535:
        raise _InvalidURL("has an invalid port")
    return None if port == _DEFAULT_PORTS[scheme] else port


def _split_authority(authority: str, scheme: str) -> tuple[str, int | None]:
    """Return the normalised host and port of ``authority`` (which must have no user-info)."""
    if "@" in authority:
        raise _InvalidURL("must not include user-info")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _InvalidURL("has an invalid host")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _InvalidURL("has an invalid host")
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
        if "[" in host or "]" in host:
            raise _InvalidURL("has an invalid host")
    if not host:
        raise _InvalidURL("must include a host")
    return _normalize_host(host), _parse_port(port_text, scheme)


def _normalize_percent(text: str) -> str:
    """Decode percent-encoded unreserved characters and uppercase the remaining escapes."""

    def replace(match: re.Match[str]) -> str:
        """Return the decoded character or the uppercased escape for one ``%XX``."""
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_RE.sub(replace, text)


def _remove_dot_segments(path: str) -> str:
    """Resolve ``.`` and ``..`` segments of an absolute path as RFC 3986 section 5.2.4 does."""
    if not path:
        return "/"
    segments = path.split("/")[1:]
    output: list[str] = []
    for segment in segments:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if segments[-1] in (".", ".."):
        output.append("")
    return "/" + "/".join(output)


def _lenient_segments(path: str) -> list[str] | None:
    """Return the non-empty segments of ``path`` as a lenient server might see them.

    Percent-escapes are decoded and the text NFKC-normalised until stable, ``\\`` is
    treated as ``/``, ``;`` parameters are stripped from each segment and empty segments
    are dropped (as servers that merge ``//`` do).  ``None`` means "cannot be decided"
    (too many layers of encoding).
    """
    decoded = path
    for _ in range(_MAX_DECODE_ROUNDS):
        again = unicodedata.normalize("NFKC", urllib.parse.unquote(decoded, errors="replace"))
        if again == decoded:
            break
        decoded = again
    else:
        return None
    segments = (segment.partition(";")[0] for segment in decoded.replace("\\", "/").split("/"))
    return [segment for segment in segments if segment]


def _parse(url: str) -> _Parsed:
    """Validate and normalise an absolute http(s) URL; raise :class:`_InvalidURL` if invalid."""
    _check_characters(url)
    match = _URI_RE.fullmatch(url)
    if match is None:  # pragma: no cover - the regex matches every string
        raise _InvalidURL("is not a valid URL")
    scheme = match.group("scheme")
    if scheme is None:
        raise _InvalidURL("must be an absolute http:// or https:// URL")
    scheme = scheme.lower()
    if not _SCHEME_RE.fullmatch(scheme) or scheme not in _DEFAULT_PORTS:
        raise _InvalidURL("must use http or https")
    authority = match.group("authority")
    if not authority:
        raise _InvalidURL("must include a host")
    host, port = _split_authority(authority, scheme)
    path = match.group("path")
    if not _PATH_RE.fullmatch(path):
        raise _InvalidURL("has an invalid path")
    path = _remove_dot_segments(_normalize_percent(path))
    return _Parsed(scheme, host, port, path, match.group("query"), match.group("fragment"))


def _unparse(parsed: _Parsed) -> str:
    """Return the normalised URL string for ``parsed`` (query kept, fragment dropped)."""
    url = _origin_string(parsed.scheme, parsed.host, parsed.port) + parsed.path
    return url if parsed.query is None else f"{url}?{parsed.query}"


def parse_allowlist_entry(entry: str) -> Origin:
    """Parse one allowlist entry into an :class:`Origin`; raise ``ValueError`` if malformed."""
    if not isinstance(entry, str):
        raise TypeError(f"callback allowlist entry {entry!r} must be a str")
    try:
        parsed = _parse(entry)
        if parsed.query is not None:
            raise _InvalidURL("must not include a query")
        if parsed.fragment is not None:
            raise _InvalidURL("must not include a fragment")
    except _InvalidURL as exc:
        raise ValueError(f"callback allowlist entry {entry!r} {exc.args[0]}") from None
    prefix = parsed.path.rstrip("/")
    return Origin(parsed.scheme, parsed.host, parsed.port, prefix)


def normalize_url(url: str) -> str | None:
    """Return the normalised absolute URL, or ``None`` if not a valid http(s) URL with a host."""
    if not isinstance(url, str):
        return None
    try:
        return _unparse(_parse(url))
    except _InvalidURL:
        return None


def redact_url(url: str) -> str:
    """Return ``url`` without user-info, query and fragment, escaped so it is safe to log."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    match = _URI_RE.fullmatch(url)
    if match is None:  # pragma: no cover - the regex matches every string
        return ""
    scheme, authority, path = match.group("scheme", "authority", "path")
    out = "" if scheme is None else scheme + ":"
    if authority is not None:
        out += "//" + authority.rpartition("@")[2]
    out += path
    return urllib.parse.quote(out, safe="".join(sorted(_URI_CHARS)))


class Allowlist:
    """The configured callback URL allowlist (empty when none is configured)."""

    entries: tuple[Origin, ...]

    def __init__(self, entries: Iterable[str] = ()) -> None:
        """Parse ``entries``; raise ``ValueError`` on the first malformed one."""
        if isinstance(entries, str):
            raise TypeError("callback allowlist must be an iterable of origins, not a str")
        self.entries = tuple(parse_allowlist_entry(entry) for entry in entries)

    @staticmethod
    def problems(entries: Iterable[str]) -> list[str]:
        """Return an error message for every malformed entry (empty when all are valid)."""
        if isinstance(entries, str):
            return ["callback allowlist must be an iterable of origins, not a str"]
        problems: list[str] = []
        for entry in entries:
            try:
                parse_allowlist_entry(entry)
            except (ValueError, TypeError) as exc:
                problems.append(str(exc))
        return problems

    def __bool__(self) -> bool:
        """Return ``False`` when no entries are configured."""
        return bool(self.entries)

    def __repr__(self) -> str:
        """Return ``Allowlist([...])`` listing the normalised entries."""
        return f"Allowlist({[str(entry) for entry in self.entries]!r})"

    def check(self, url: str) -> str | None:
        """Return the normalised URL to call when ``url`` is allowed, else ``None``."""
        if not isinstance(url, str):
            return None
        try:
            parsed = _parse(url)
        except _InvalidURL:
            return None
        if any(entry._matches_parsed(parsed) for entry in self.entries):
            return _unparse(parsed)
        return None
