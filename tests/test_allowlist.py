"""Tests for funtask._allowlist (callback URL allowlist and normalisation)."""

from __future__ import annotations

import posixpath
import unicodedata
import urllib.parse

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from funtask._allowlist import (
    Allowlist,
    Origin,
    normalize_url,
    parse_allowlist_entry,
    redact_url,
)

ALLOWLIST = Allowlist(
    [
        "https://hooks.example.com/hooks/",
        "HTTP://Plain.Example.COM.:80",
        "https://ports.example.com:8443",
        "http://[::1]:8080",
        "https://[2001:DB8::0001]/cb",
    ]
)

# (callback URL, normalised URL to call, or None when refused)
CASES: list[tuple[str, str | None]] = [
    # Plain matches and the path prefix on a segment boundary.
    ("https://hooks.example.com/hooks", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com/hooks/", "https://hooks.example.com/hooks/"),
    ("https://hooks.example.com/hooks/job/1", "https://hooks.example.com/hooks/job/1"),
    ("https://hooks.example.com/hooks-evil", None),
    ("https://hooks.example.com/hooksx/y", None),
    ("https://hooks.example.com/", None),
    ("https://hooks.example.com", None),
    ("https://hooks.example.com/other/hooks", None),
    ("https://hooks.example.com/HOOKS", None),
    # Mixed case scheme and host.
    ("HTTPS://HOOKS.Example.Com/hooks/x", "https://hooks.example.com/hooks/x"),
    ("hTTp://plain.example.com/anything", "http://plain.example.com/anything"),
    # Default ports both ways, other ports kept and compared.
    ("https://hooks.example.com:443/hooks", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com:0443/hooks", "https://hooks.example.com/hooks"),
    ("http://plain.example.com:80/", "http://plain.example.com/"),
    ("http://plain.example.com:/x", "http://plain.example.com/x"),
    ("https://hooks.example.com:8443/hooks", None),
    ("http://plain.example.com:8080/", None),
    ("https://ports.example.com:8443/x", "https://ports.example.com:8443/x"),
    ("https://ports.example.com/x", None),
    ("https://ports.example.com:443/x", None),
    ("https://ports.example.com:8444/x", None),
    # Scheme mismatch.
    ("http://hooks.example.com/hooks", None),
    ("https://plain.example.com/", None),
    ("http://ports.example.com:8443/", None),
    # Trailing dot on the host.
    ("https://hooks.example.com./hooks", "https://hooks.example.com/hooks"),
    ("http://plain.example.com.:80", "http://plain.example.com/"),
    ("https://hooks.example.com../hooks", None),
    # Look-alike hosts.
    ("https://hooks.example.com.evil.com/hooks", None),
    ("https://evilhooks.example.com/hooks", None),
    ("https://sub.hooks.example.com/hooks", None),
    ("https://hooks.example.co/hooks", None),
    # User-info, including an empty one and the classic confusions.
    ("https://user@hooks.example.com/hooks", None),
    ("https://user:pw@hooks.example.com/hooks", None),
    ("https://@hooks.example.com/hooks", None),
    ("https://:@hooks.example.com/hooks", None),
    ("https://hooks.example.com@evil.com/", None),
    ("https://hooks.example.com:443@evil.com/hooks", None),
    ("https://evil.com@hooks.example.com/hooks", None),
    ("https://evil.com#@hooks.example.com", None),
    ("https://evil.com?@hooks.example.com/hooks", None),
    ("https://evil.com/@hooks.example.com/hooks", None),
    # Backslashes are not URL characters (WHATWG would treat them as "/").
    ("https://hooks.example.com\\@evil.com", None),
    ("https://evil.com\\@hooks.example.com/hooks", None),
    ("https://hooks.example.com\\hooks", None),
    ("https://hooks.example.com/hooks\\..\\admin", None),
    ("https:\\\\hooks.example.com/hooks", None),
    # IPv6 literals.
    ("http://[::1]:8080/", "http://[::1]:8080/"),
    ("http://[::0001]:8080/x", "http://[::1]:8080/x"),
    ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080/"),
    ("http://[::1]/", None),
    ("http://[::1]:8081/", None),
    ("https://[::1]:8080/", None),
    ("http://[::2]:8080/", None),
    ("https://[2001:db8::1]/cb/x", "https://[2001:db8::1]/cb/x"),
    ("https://[2001:0DB8:0:0::1]:443/cb", "https://[2001:db8::1]/cb"),
    ("https://[2001:db8::1]/cbx", None),
    ("http://::1:8080/", None),
    ("http://[::1:8080/", None),
    ("http://[::1]x:8080/", None),
    ("http://[::1%25eth0]:8080/", None),
    ("http://[127.0.0.1]:8080/", None),
    ("http://[v1.x]:8080/", None),
    # Percent-encoding.
    ("https://hooks.example.com/hook%73", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com/%68%6F%6F%6B%73/x", "https://hooks.example.com/hooks/x"),
    ("https://hooks.example.com/hooks/a%2fb", "https://hooks.example.com/hooks/a%2Fb"),
    ("https://hooks.example.com/hooks/%7e%41", "https://hooks.example.com/hooks/~A"),
    ("https://hooks.example.com/hooks/%e2%82%ac", "https://hooks.example.com/hooks/%E2%82%AC"),
    ("https://hooks.example.com/hooks%2F", None),
    ("https://hooks.example.com/hooks%2Fx", None),
    ("https://hooks.example.com/hooks%2F..%2Fadmin", None),
    ("https://hooks.example.com/hooks/x%2F..%2F..%2Fadmin", None),
    ("https://hooks.example.com/hooks/%252E%252E/admin", None),
    ("https://hooks.example.com/hooks/..%5Cadmin", None),
    ("https://hooks.example.com/hooks/%EF%BC%8E%EF%BC%8E/admin", None),
    ("https://hooks.example.com/hooks/%2F..%2F", None),
    ("https://hooks.example.com/hooks/%2F..%2F/..;/hooks", None),
    (
        "https://hooks.example.com/hooks/%25252e%25252e%25252e/x",
        "https://hooks.example.com/hooks/%25252e%25252e%25252e/x",
    ),
    ("https://hooks.example.com/hooks/%2525252525252e", None),
    ("https://hooks.example.com/hooks/x%3B/..%3B/y", None),
    ("https://hooks.example.com/hooks/%EF%BC%8F..%EF%BC%8Fadmin", None),
    ("https://hooks.example.com/hooks/a%2Fb/c", "https://hooks.example.com/hooks/a%2Fb/c"),
    ("https://hooks.example.com/hooks/...", "https://hooks.example.com/hooks/..."),
    ("https://hooks.example.com/hooks//../x", "https://hooks.example.com/hooks/x"),
    ("https://hooks.example.com/hooks/%zz", None),
    ("https://hooks.example.com/hooks/%4", None),
    ("https://hooks%2Eexample.com/hooks", None),
    # Dot segments.
    ("https://hooks.example.com/hooks/./x", "https://hooks.example.com/hooks/x"),
    ("https://hooks.example.com/hooks/x/../y", "https://hooks.example.com/hooks/y"),
    ("https://hooks.example.com/admin/../hooks/x", "https://hooks.example.com/hooks/x"),
    ("https://hooks.example.com/../hooks", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com/hooks/..", None),
    ("https://hooks.example.com/hooks/../admin", None),
    ("https://hooks.example.com/hooks/x/../../admin", None),
    ("https://hooks.example.com/hooks/%2e%2E/admin", None),
    ("https://hooks.example.com/hooks/.%2e/admin", None),
    ("https://hooks.example.com/hooks/..;/admin", None),
    ("https://hooks.example.com/hooks/;x/../../admin", None),
    # Query kept as is, fragment dropped.
    ("https://hooks.example.com/hooks?a=%2f&b=c", "https://hooks.example.com/hooks?a=%2f&b=c"),
    ("https://hooks.example.com/hooks?", "https://hooks.example.com/hooks?"),
    ("https://hooks.example.com/hooks?x=/../admin", "https://hooks.example.com/hooks?x=/../admin"),
    ("https://hooks.example.com/hooks?a[]=1", "https://hooks.example.com/hooks?a[]=1"),
    ("https://hooks.example.com/hooks#frag", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com/hooks?q=1#frag", "https://hooks.example.com/hooks?q=1"),
    ("https://hooks.example.com?q=/hooks", None),
    ("https://hooks.example.com#/hooks", None),
    # Empty host, missing host, relative and non-http URLs.
    ("https:///x", None),
    ("https:///hooks", None),
    ("https://", None),
    ("https:", None),
    ("https:hooks.example.com/hooks", None),
    ("//hooks.example.com/hooks", None),
    ("/hooks", None),
    ("hooks", None),
    ("", None),
    ("hooks.example.com/hooks", None),
    ("javascript:alert(1)", None),
    ("javascript://hooks.example.com/hooks", None),
    ("file:///etc/passwd", None),
    ("ftp://hooks.example.com/hooks", None),
    ("httpx://hooks.example.com/hooks", None),
    ("ws://hooks.example.com/hooks", None),
    # Bad ports.
    ("https://hooks.example.com:99999/hooks", None),
    ("https://hooks.example.com:65536/hooks", None),
    ("https://hooks.example.com:0/hooks", None),
    ("https://hooks.example.com:abc/hooks", None),
    ("https://hooks.example.com:-443/hooks", None),
    ("https://hooks.example.com:443:443/hooks", None),
    ("https://hooks.example.com:+443/hooks", None),
    ("https://hooks.example.com:" + "0" * 5000 + "443/hooks", "https://hooks.example.com/hooks"),
    ("https://hooks.example.com:" + "9" * 5000 + "/hooks", None),
    # Whitespace, control and other non-URL characters.
    (" https://hooks.example.com/hooks", None),
    ("https://hooks.example.com/hooks ", None),
    ("https://hooks.example.com/ho oks", None),
    ("https://hooks.example.com/hooks\n", None),
    ("https://hooks.example.com/hooks\r\nX-Evil: 1", None),
    ("https://hooks.exa\tmple.com/hooks", None),
    ("https://hooks.example.com/hooks\x00", None),
    ("https://hooks.example.com\x00.evil.com/hooks", None),
    ("https://hooks.example.com/hooks/\u200b", None),
    ("https://hooks.example.com/hooks/\u00e9", None),
    ("https://hooks.ex\u0430mple.com/hooks", None),
    ("https://hooks.example.com/hooks/<x>", None),
    ("https://hooks.example.com/hooks/[x]", None),
    ("https://hooks_example.com/hooks", None),
    ("https://hooks.example.com/hooks?a={b}", None),
]


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_check_table(url: str, expected: str | None) -> None:
    assert ALLOWLIST.check(url) == expected


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_table_allowed_urls_are_stable(url: str, expected: str | None) -> None:
    if expected is not None:
        assert normalize_url(url) == expected
        assert ALLOWLIST.check(expected) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://Evil.COM.:443/a/./b/../c?Q=%2f#x", "https://evil.com/a/c?Q=%2f"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("https://example.com:80/", "https://example.com:80/"),
        ("http://example.com:443/", "http://example.com:443/"),
        ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:127.0.0.1]/"),
        ("http://[::ffff:7f00:1]/", "http://[::ffff:127.0.0.1]/"),
        ("http://127.0.0.1:80/x", "http://127.0.0.1/x"),
        ("http://localhost/%41%2f%2F%3a", "http://localhost/A%2F%2F%3A"),
        ("https://h_1.internal/x", "https://h_1.internal/x"),
        ("https://example.com/a//b/", "https://example.com/a//b/"),
        ("https://example.com/a/.", "https://example.com/a/"),
        ("https://example.com/..", "https://example.com/"),
        ("https://example.com/?", "https://example.com/?"),
        ("https://user@example.com/", None),
        ("https://example.com:99999/", None),
        ("https://example.com:abc/", None),
        ("https://-bad.example.com/", None),
        ("https://bad-.example.com/", None),
        ("https://" + "a" * 64 + ".com/", None),
        ("https://" + "a." * 127 + "com/", None),
        ("mailto:x@example.com", None),
        ("data:text/plain,hi", None),
    ],
)
def test_normalize_url(url: str, expected: str | None) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize("bad", [None, 42, b"https://example.com/", ["https://example.com/"]])
def test_non_string_urls_are_refused_without_exception(bad: object) -> None:
    assert normalize_url(bad) is None  # type: ignore[arg-type]
    assert ALLOWLIST.check(bad) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("https://hooks.example.com", Origin("https", "hooks.example.com")),
        ("https://hooks.example.com/", Origin("https", "hooks.example.com")),
        ("HTTPS://Hooks.Example.COM.:443", Origin("https", "hooks.example.com")),
        ("http://h.example.com:80/", Origin("http", "h.example.com")),
        ("http://h.example.com:8080", Origin("http", "h.example.com", 8080)),
        ("https://h.example.com:80", Origin("https", "h.example.com", 80)),
        ("https://h.example.com/hooks", Origin("https", "h.example.com", None, "/hooks")),
        ("https://h.example.com/hooks/", Origin("https", "h.example.com", None, "/hooks")),
        ("https://h.example.com/hook%73/", Origin("https", "h.example.com", None, "/hooks")),
        ("https://h.example.com/a/../b/./c", Origin("https", "h.example.com", None, "/b/c")),
        ("https://h.example.com/a%2fb", Origin("https", "h.example.com", None, "/a%2Fb")),
        ("http://[::1]:8080", Origin("http", "[::1]", 8080)),
        ("http://[0::1]:80/x/", Origin("http", "[::1]", None, "/x")),
        ("https://10.0.0.1:8443", Origin("https", "10.0.0.1", 8443)),
    ],
)
def test_parse_allowlist_entry(entry: str, expected: Origin) -> None:
    assert parse_allowlist_entry(entry) == expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("hooks.example.com", "must be an absolute http:// or https:// URL"),
        ("//hooks.example.com", "must be an absolute http:// or https:// URL"),
        ("/hooks", "must be an absolute http:// or https:// URL"),
        ("ftp://x", "must use http or https"),
        ("file:///etc", "must use http or https"),
        ("javascript:alert(1)", "must use http or https"),
        ("ws://hooks.example.com", "must use http or https"),
        ("https://", "must include a host"),
        ("https:///hooks", "must include a host"),
        ("https:hooks.example.com", "must include a host"),
        ("https://:443", "must include a host"),
        ("https://.", "must include a host"),
        ("https://user@hooks.example.com", "must not include user-info"),
        ("https://user:pw@hooks.example.com", "must not include user-info"),
        ("https://@hooks.example.com", "must not include user-info"),
        ("https://hooks.example.com?x=1", "must not include a query"),
        ("https://hooks.example.com/?", "must not include a query"),
        ("https://hooks.example.com#x", "must not include a fragment"),
        ("https://hooks.example.com/#", "must not include a fragment"),
        ("https://hooks.example.com:99999", "has an invalid port"),
        ("https://hooks.example.com:0", "has an invalid port"),
        ("https://hooks.example.com:abc", "has an invalid port"),
        ("https://hooks.example.com:80:80", "has an invalid port"),
        ("https://[::1]:x", "has an invalid port"),
        ("https://[::1", "has an invalid host"),
        ("https://[::g]", "has an invalid host"),
        ("https://[::1]x", "has an invalid host"),
        ("https://hooks..example.com", "has an invalid host"),
        ("https://hooks%2Eexample.com", "has an invalid host"),
        ("https://hooks.example.com/a[b]", "has an invalid path"),
        ("", "is empty"),
        (" https://hooks.example.com", "contains whitespace or control characters"),
        ("https://hooks.example.com ", "contains whitespace or control characters"),
        ("https://hooks.example.com\n", "contains whitespace or control characters"),
        ("https://hooks.example.com/\x7f", "contains whitespace or control characters"),
        ("https://hooks.example.com/\u00a0", "contains whitespace or control characters"),
        ("https://hooks.example.com\\", "contains a character not allowed in a URL ('\\\\')"),
        ("https://h\u00e9.example.com", "contains a character not allowed in a URL ('\u00e9')"),
        ("https://hooks.example.com/%g0", "has invalid percent-encoding"),
    ],
)
def test_parse_allowlist_entry_errors(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_allowlist_entry(entry)
    assert str(info.value) == f"callback allowlist entry {entry!r} {message}"


def test_parse_allowlist_entry_non_string() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_allowlist_entry(42)  # type: ignore[arg-type]


def test_allowlist_init_raises_on_first_bad_entry() -> None:
    with pytest.raises(ValueError, match="'ftp://a'"):
        Allowlist(["https://ok.example.com", "ftp://a", "https://u@b"])


def test_allowlist_rejects_bare_string() -> None:
    with pytest.raises(TypeError, match="not a str"):
        Allowlist("https://hooks.example.com")


def test_allowlist_problems_lists_every_bad_entry() -> None:
    problems = Allowlist.problems(["https://ok.example.com", "ftp://a", "https://u@b", 7])  # type: ignore[list-item]
    assert problems == [
        "callback allowlist entry 'ftp://a' must use http or https",
        "callback allowlist entry 'https://u@b' must not include user-info",
        "callback allowlist entry 7 must be a str",
    ]
    assert Allowlist.problems(["https://a.example.com", "http://[::1]:1"]) == []
    assert Allowlist.problems("https://a.example.com") == [
        "callback allowlist must be an iterable of origins, not a str"
    ]


def test_allowlist_truthiness_entries_and_repr() -> None:
    assert not Allowlist([])
    assert not Allowlist()
    assert Allowlist(iter(["https://a.example.com"]))
    allowlist = Allowlist(["HTTPS://A.example.com:443/x/", "http://[::1]:8080"])
    assert allowlist.entries == (
        Origin("https", "a.example.com", None, "/x"),
        Origin("http", "[::1]", 8080, ""),
    )
    assert repr(allowlist) == "Allowlist(['https://a.example.com/x', 'http://[::1]:8080'])"


def test_empty_allowlist_allows_nothing() -> None:
    assert Allowlist([]).check("https://example.com/") is None


def test_origin_is_frozen_and_matches() -> None:
    origin = parse_allowlist_entry("https://hooks.example.com/hooks")
    assert str(origin) == "https://hooks.example.com/hooks"
    assert origin.matches("https://HOOKS.example.com:443/hooks/x")
    assert not origin.matches("https://hooks.example.com/hooks-evil")
    assert not origin.matches("not a url")
    with pytest.raises(AttributeError):
        origin.host = "evil.com"  # type: ignore[misc]


def test_entry_with_root_path_allows_every_path() -> None:
    allowlist = Allowlist(["https://a.example.com/"])
    assert allowlist.check("https://a.example.com") == "https://a.example.com/"
    assert allowlist.check("https://a.example.com/x/../y") == "https://a.example.com/y"


def test_entry_with_nested_prefix() -> None:
    allowlist = Allowlist(["https://a.example.com/api/v1/hooks"])
    assert allowlist.check("https://a.example.com/api/v1/hooks/x") is not None
    assert allowlist.check("https://a.example.com/api/v1/hooks") is not None
    assert allowlist.check("https://a.example.com/api/v1/hooksx") is None
    assert allowlist.check("https://a.example.com/api/v1") is None
    assert allowlist.check("https://a.example.com/api/v1/hooks/../other") is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@example.com/a?token=s3cret#frag", "https://example.com/a"),
        ("https://a@b@example.com/", "https://example.com/"),
        ("https://hooks.example.com\\@evil.com/x?y", "https://evil.com/x"),
        ("https://example.com/a\r\nInjected: 1", "https://example.com/a%0D%0AInjected:%201"),
        ("https://example.com/caf\u00e9", "https://example.com/caf%C3%A9"),
        ("/relative?x=1", "/relative"),
        ("", ""),
        ("https://example.com", "https://example.com"),
        ("javascript:alert(1)", "javascript:alert(1)"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_non_string() -> None:
    assert redact_url(None) == "<NoneType>"  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

_SEGMENTS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2E",
        "hooks",
        "hook%73",
        "HOOKS",
        "hooks-evil",
        "x",
        "a%2Fb",
        "%2F..%2F",
        "..%2F",
        "%2f",
        "..;",
        ";x",
        "%252E%252E",
        "%5C..",
        "%EF%BC%8E%EF%BC%8E",
        "~",
        "%7E",
        "%41",
        "%e2%82%ac",
        "@",
        ":",
    ]
)

_PATHS = st.lists(_SEGMENTS, max_size=8).map(lambda segments: "/" + "/".join(segments))

_HOSTS = st.sampled_from(
    [
        "hooks.example.com",
        "HOOKS.Example.com",
        "hooks.example.com.",
        "evil.com",
        "hooks.example.com@evil.com",
        "@hooks.example.com",
        "[::1]",
        "[::0001]",
        "[2001:DB8::1]",
        "127.0.0.1",
        "",
        "h_1",
    ]
)

_PORTS = st.sampled_from(["", ":", ":80", ":443", ":0443", ":8080", ":99999", ":x"])

_URLS = st.builds(
    lambda scheme, host, port, path, query, fragment: (
        f"{scheme}://{host}{port}{path}{query}{fragment}"
    ),
    st.sampled_from(["http", "https", "HTTPS", "ftp", "javascript"]),
    _HOSTS,
    _PORTS,
    _PATHS,
    st.sampled_from(["", "?", "?a=1", "?x=/../y&b=%2f", "?a=%zz"]),
    st.sampled_from(["", "#", "#frag", "#@evil.com"]),
)

_ANY_URLS = st.one_of(
    _URLS,
    st.text(),
    st.text(alphabet="htps:/[]@%.:?#\\;~aAEF2x019").map(lambda text: "https://" + text),
)

_PREFIXED = Allowlist(["https://hooks.example.com/hooks", "http://[::1]:8080/hooks/x/"])


def _server_views(path: str) -> list[str]:
    """Return ``path`` resolved as various (more or less lenient) servers would route it."""
    views = []
    for rounds in (0, 1, 3):
        for nfkc in (False, True):
            for params in (False, True):
                decoded = path
                for _ in range(rounds):
                    decoded = urllib.parse.unquote(decoded)
                    if nfkc:
                        decoded = unicodedata.normalize("NFKC", decoded)
                if rounds:
                    decoded = decoded.replace("\\", "/")
                if params:
                    decoded = "/".join(part.partition(";")[0] for part in decoded.split("/"))
                # RFC 3986 resolution keeps "//"; posixpath.normpath merges it.
                views.append(_rfc_resolve(decoded))
                views.append("/" + posixpath.normpath(decoded).lstrip("/"))
    return views


def _rfc_resolve(path: str) -> str:
    """Resolve dot segments as RFC 3986 section 5.2.4 does (independent implementation)."""
    output = ""
    while path:
        if path.startswith(("/./", "/../")) or path in ("/.", "/.."):
            if path.startswith("/..") and path[3:4] in ("", "/"):
                output = output[: output.rfind("/")] if "/" in output else ""
                path = "/" + path[4:]
            else:
                path = "/" + path[3:]
        else:
            end = path.find("/", 1)
            end = len(path) if end < 0 else end
            output, path = output + path[:end], path[end:]
    return output or "/"


def _inside(path: str, prefix: str) -> bool:
    """Return whether ``path`` is ``prefix`` or below it."""
    return path == prefix or path.startswith(prefix + "/")


@given(_ANY_URLS)
@example("https://hooks.example.com/a/..//x")
@example("https://h/%2e%2e%2F%2e")
@example("https://[::FFFF:1.2.3.4]:443")
def test_normalisation_is_idempotent(url: str) -> None:
    normalised = normalize_url(url)
    if normalised is not None:
        assert normalize_url(normalised) == normalised


@given(_ANY_URLS)
def test_allowed_urls_normalised_form_is_allowed(url: str) -> None:
    for allowlist in (ALLOWLIST, _PREFIXED):
        allowed = allowlist.check(url)
        if allowed is not None:
            assert allowed == normalize_url(url)
            assert allowlist.check(allowed) == allowed


@given(
    st.one_of(_PATHS, _PATHS.map(lambda path: "/hooks" + path)),
    st.sampled_from(["", "?q=/../../admin"]),
)
@example("/hooks/..", "")
@example("/hooks/a%2Fb", "")
def test_allowed_prefixed_paths_never_escape_the_prefix(path: str, query: str) -> None:
    allowed = _PREFIXED.check(f"https://hooks.example.com{path}{query}")
    if allowed is None:
        return
    url = httpx.URL(allowed)
    assert (url.scheme, url.host, url.port) == ("https", "hooks.example.com", None)
    normalised_path = urllib.parse.urlsplit(allowed).path
    assert _inside(normalised_path, "/hooks")
    for view in _server_views(normalised_path):
        assert _inside(view, "/hooks"), view
    # The request httpx would send stays under the prefix too.
    assert url.raw_path.decode("ascii").startswith(normalised_path)
    assert _inside(posixpath.normpath(url.path), "/hooks")


def test_rfc_resolve_reference_examples() -> None:
    # RFC 3986 section 5.4 examples, to validate the independent test helper.
    assert _rfc_resolve("/a/b/c/./../../g") == "/a/g"
    assert _rfc_resolve("/a/b/../../../g") == "/g"
    assert _rfc_resolve("/a//../b") == "/a/b"
    assert _rfc_resolve("/a/.") == "/a/"
    assert _rfc_resolve("/..") == "/"


@given(_URLS)
def test_httpx_agrees_with_normalised_url(url: str) -> None:
    normalised = normalize_url(url)
    if normalised is None:
        return
    parsed = httpx.URL(normalised)
    split = urllib.parse.urlsplit(normalised)
    assert parsed.scheme == split.scheme
    assert parsed.port == split.port
    assert f"{parsed.host}" == (split.hostname or "")
    assert parsed.raw_path.decode("ascii").split("?")[0] == split.path
    assert parsed.userinfo == b""
