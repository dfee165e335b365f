"""GET /dashboard: the built-in page, its caching headers and its strict CSP."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import pytest
from quart import Response
from trio.testing import MockClock

import funtask
from funtask._dashboard import with_instance
from funtask.testing import open_test_client

from _support import build_server

PAGE = files("funtask").joinpath("dashboard.html").read_bytes()
INSTANCE = "dash-1"
SERVED = with_instance(PAGE, INSTANCE)  # the page as a server with instance_id=INSTANCE serves it


class _PageScan(HTMLParser):
    """Collects the inline blocks and every attribute of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self.attributes: list[tuple[str, str, str | None]] = []
        self.external_scripts: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes.extend((tag, name, value) for name, value in attrs)
        if tag in self.blocks:
            if tag == "script" and dict(attrs).get("src"):
                self.external_scripts.append(dict(attrs)["src"] or "")
            self.blocks[tag].append("")
            self._open = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.blocks[self._open][-1] += data


def scan(html: bytes) -> _PageScan:
    parser = _PageScan()
    parser.feed(html.decode("utf-8"))
    parser.close()
    return parser


def csp_hash(content: str) -> str:
    digest = hashlib.sha256(content.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def directives(policy: str) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            result[words[0]] = words[1:]
    return result


@pytest.fixture
def server(tmp_path: Path) -> funtask.Server:
    return build_server(tmp_path, dashboard=True, instance_id=INSTANCE)


async def test_dashboard_is_off_by_default(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        response = await client.get("/dashboard")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


async def test_dashboard_page(autojump_clock: MockClock, server: funtask.Server) -> None:
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'(W/)?"[^"]+"', response.headers["etag"])
    assert response.content == SERVED
    assert b"<title>" in response.content


async def test_dashboard_needs_no_auth_even_with_a_wrong_token(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "if_none_match",
    [
        "{etag}",
        "W/{etag}",
        '"other", {etag}',
        '"other",{etag} , "more"',
        '"a", W/{etag}',
    ],
)
async def test_if_none_match_gives_304(
    autojump_clock: MockClock, server: funtask.Server, if_none_match: str
) -> None:
    async with open_test_client(server, authorized=False) as client:
        etag = (await client.get("/dashboard")).headers["etag"]
        response = await client.get(
            "/dashboard", headers={"If-None-Match": if_none_match.format(etag=etag)}
        )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("if_none_match", ['"stale"', 'W/"stale", "older"', ""])
async def test_other_etags_get_the_page(
    autojump_clock: MockClock, server: funtask.Server, if_none_match: str
) -> None:
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard", headers={"If-None-Match": if_none_match})
    assert response.status_code == 200
    assert response.content == SERVED


async def test_csp_allows_exactly_the_inline_blocks(
    autojump_clock: MockClock, server: funtask.Server
) -> None:
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard")
    policy = response.headers["content-security-policy"]
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "*" not in policy
    rules = directives(policy)
    assert rules["default-src"] == ["'none'"]
    page = scan(response.content)
    assert len(page.blocks["script"]) == 1
    assert len(page.blocks["style"]) == 1
    assert rules["script-src"] == [csp_hash(page.blocks["script"][0])]
    assert rules["style-src"] == [csp_hash(page.blocks["style"][0])]
    assert rules["connect-src"] == ["'self'"]
    assert rules["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize(
    ("instance", "attribute"),
    [
        ("worker-7", "worker-7"),
        ("a\"<b>&c'", "a&quot;&lt;b&gt;&amp;c&#x27;"),
        ("h\u00f6st:12", "h\u00f6st:12"),
    ],
)
async def test_page_names_the_instance(
    autojump_clock: MockClock, tmp_path: Path, instance: str, attribute: str
) -> None:
    server = build_server(tmp_path, dashboard=True, instance_id=instance)
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard")
    tag = f'<meta name="funtask-instance" content="{attribute}">'.encode()
    assert response.content.count(tag) == 1
    assert response.content.replace(tag, b'<meta name="funtask-instance" content="">') == PAGE
    parsed = [
        value
        for tag_name, name, value in scan(response.content).attributes
        if tag_name == "meta" and name == "content" and value == instance
    ]
    assert parsed == [instance]
    # The ETag is the served page's; the CSP is the same for every instance.
    async with open_test_client(build_server(tmp_path, dashboard=True)) as client:
        other = await client.get("/dashboard")
    assert other.headers["etag"] != response.headers["etag"]
    assert other.headers["content-security-policy"] == response.headers["content-security-policy"]


def test_instance_needs_the_placeholder_tag() -> None:
    assert PAGE.count(b'<meta name="funtask-instance" content="">') == 1
    with pytest.raises(ValueError, match="funtask-instance"):
        with_instance(b"<html></html>", "x")


def test_page_loads_nothing_from_other_origins() -> None:
    text = PAGE.decode("utf-8").lower()
    for needle in ("http://", "https://", "//cdn"):
        assert needle not in text, needle
    page = scan(PAGE)
    for needle in ("@import", "url("):
        assert needle not in page.blocks["style"][0], needle
    assert page.external_scripts == []
    for tag, name, value in page.attributes:
        if name in ("src", "href", "action", "srcset"):
            assert value is not None
            assert value.startswith(("#", "data:")), (tag, name, value)


def test_page_has_no_inline_handlers_or_style_attributes() -> None:
    page = scan(PAGE)
    names = {name for _, name, _ in page.attributes}
    assert "style" not in names
    assert not [name for name in names if name.startswith("on")]
    # Nor anything the script builds as HTML from strings.
    script = page.blocks["script"][0]
    for needle in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert needle not in script, needle
    assert 'setAttribute("style"' not in script


def test_page_has_the_ids_the_tests_rely_on() -> None:
    page = scan(PAGE)
    ids = {value for _, name, value in page.attributes if name == "id"}
    for expected in (
        "token-form",
        "token-input",
        "token-error",
        "server-name",
        "uptime",
        "count-healthy",
        "count-failed",
        "count-running",
        "instance-name",
        "connection",
        "sign-out",
        "store-status",
        "pool",
        "pool-instances",
        "pool-running",
    ):
        assert expected in ids


async def view() -> Response:
    return Response("custom")


def test_dashboard_path_is_reserved_when_on(tmp_path: Path) -> None:
    server = build_server(tmp_path, dashboard=True)
    server.add_handler("GET /dashboard", view)
    with pytest.raises(funtask.ConfigError, match="/dashboard"):
        server.validate()


async def test_dashboard_path_is_free_when_off(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path)
    server.add_handler("GET /dashboard", view)
    server.validate()
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/dashboard")
    assert response.status_code == 200
    assert response.text == "custom"


def config_errors(exc: BaseException) -> list[BaseException]:
    """The ConfigErrors in ``exc``, looking inside exception groups."""
    if isinstance(exc, funtask.ConfigError):
        return [exc]
    return [leaf for sub in getattr(exc, "exceptions", ()) for leaf in config_errors(sub)]


async def test_reserved_dashboard_refuses_to_serve(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    server = build_server(tmp_path, dashboard=True)
    server.add_handler("/dashboard", view)
    caught: Exception | None = None
    try:
        async with open_test_client(server):
            pass  # pragma: no cover
    except Exception as exc:  # open_test_client raises it inside a Trio exception group
        caught = exc
    assert caught is not None
    [error] = config_errors(caught)
    assert "'/dashboard' conflicts with a built-in route" in str(error)
