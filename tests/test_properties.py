"""Property tests over HTTP: callback allowlist, jobId validation, params, result size limit.

Every example runs a whole server in its own ``trio.run`` under a
``MockClock(autojump_threshold=0)`` and talks to it with the in-process test
client (``open_test_client``). Callbacks go to an ``httpx.MockTransport``
that records the URL actually called.
"""

from __future__ import annotations

import json
import math
import string
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import funtask
from funtask._jobs import MAX_RESULT_SIZE
from funtask.testing import open_test_client

from _support import CallbackReceiver, build_server, wait_until

PROPERTY_SETTINGS = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def dead_letters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dead-letters")


def run_with_client(
    server: funtask.Server,
    body: Callable[[httpx.AsyncClient, CallbackReceiver], Awaitable[Any]],
) -> Any:
    """Run ``body(client, callbacks)`` against ``server`` in a fresh Trio run on a mock clock."""
    callbacks = CallbackReceiver()

    async def main() -> Any:
        transport = callbacks.transport()
        async with open_test_client(server, callback_transport=transport) as client:
            return await body(client, callbacks)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- the callback allowlist ------------------------------------------------------------

#: (scheme, host, port, path prefix) of each allowlist entry, as configured below.
ENTRIES = [
    ("https", "hooks.example.com", 443, "/hooks"),
    ("http", "[2001:db8::1]", 8080, "/cb"),
    ("https", "open.example.org", 443, ""),
]
ALLOWLIST = [
    "https://hooks.example.com/hooks",
    "http://[2001:db8::1]:8080/cb/",
    "https://open.example.org",
]
DEFAULT_PORTS = {"http": 80, "https": 443}


def _fully_decoded(path: str) -> str:
    for _ in range(8):
        decoded = urllib.parse.unquote(path)
        if decoded == path:
            break
        path = decoded
    return path.replace("\\", "/")


def assert_under_an_entry(url: httpx.URL) -> None:
    """The URL actually called is inside one allowlist entry, whatever reading of its path."""
    assert url.userinfo == b"", url
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or DEFAULT_PORTS[url.scheme]
    raw_path = url.raw_path.decode("ascii").split("?", 1)[0]
    decoded = _fully_decoded(raw_path)
    segments = [s.partition(";")[0] for s in decoded.split("/")]
    assert "." not in segments and ".." not in segments, url
    for scheme, entry_host, entry_port, prefix in ENTRIES:
        if (url.scheme, host, port) == (scheme, entry_host, entry_port):
            for path in (raw_path, decoded):
                assert path == prefix or path.startswith(prefix + "/") or not prefix, url
            return
    raise AssertionError(f"{url} is under no allowlist entry")


async def _post_callback(
    client: httpx.AsyncClient, callbacks: CallbackReceiver, url: str
) -> tuple[httpx.Response, CallbackReceiver]:
    response = await client.post("/run/greet", json={"callbackUrl": url})
    if response.status_code == 202:
        await wait_until(lambda: callbacks.attempts)
    return response, callbacks


def check_callback(server: funtask.Server, url: str) -> tuple[int, str | None]:
    """POST a run with ``url``; return the status and the URL called back (if any)."""
    response, callbacks = run_with_client(server, lambda c, cb: _post_callback(c, cb, url))
    if url == "":  # an empty callbackUrl counts as absent: a sync run
        assert response.status_code == 200
        return 200, None
    assert response.status_code in (202, 400), (url, response.status_code, response.text)
    if response.status_code == 400:
        assert response.json() == {"error": "callback URL not allowed"}, url
        return 400, None
    assert len(callbacks.attempts) == 1
    called = callbacks.attempts[0].request.url
    assert_under_an_entry(called)
    return 202, str(called)


def _random_case(draw: st.DrawFn, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)


def _encode_some(draw: st.DrawFn, segment: str) -> str:
    """Percent-encode some unreserved characters (upper- or lowercase hex)."""
    out = []
    for char in segment:
        if char in string.ascii_letters + string.digits + "-._~" and draw(st.booleans()):
            code = f"{ord(char):02X}"
            out.append("%" + (code.lower() if draw(st.booleans()) else code))
        else:
            out.append(char)
    return "".join(out)


SAFE_SEGMENT = st.text(string.ascii_lowercase + string.digits + "-_~", min_size=1, max_size=8)


@st.composite
def disguised_allowed_url(draw: st.DrawFn) -> tuple[str, str]:
    """An allowed URL in disguise, and its normalised form (the one that must be called)."""
    scheme, host, port, prefix = draw(st.sampled_from(ENTRIES))
    tail = draw(st.lists(SAFE_SEGMENT, max_size=3))
    query = draw(st.sampled_from(["", "?a=b", "?token=x%2Fy&z"]))
    default = DEFAULT_PORTS[scheme]
    canonical = f"{scheme}://{host}{'' if port == default else f':{port}'}"
    canonical += "/".join([prefix, *tail]) if prefix or tail else "/"
    canonical += query

    shown_host = host
    if host.startswith("["):
        shown_host = draw(
            st.sampled_from(["[2001:db8::1]", "[2001:DB8::1]", "[2001:db8:0:0:0:0:0:1]"])
        )
    else:
        shown_host = _random_case(draw, host) + draw(st.sampled_from(["", "."]))
    if port == default:
        shown_port = draw(st.sampled_from(["", f":{default}", f":0{default}"]))
    else:
        shown_port = f":{port}"
    segments = [s for s in prefix.split("/") if s] + tail
    shown: list[str] = []
    for segment in segments:
        shown.extend(draw(st.sampled_from([[], ["."], ["zz", ".."], [".", "zz", ".."]])))
        shown.append(_encode_some(draw, segment))
    path = "/" + "/".join(shown) if shown else draw(st.sampled_from(["", "/"]))
    fragment = draw(st.sampled_from(["", "#frag"]))
    url = f"{_random_case(draw, scheme)}://{shown_host}{shown_port}{path}{query}{fragment}"
    return url, canonical


@st.composite
def hostile_url(draw: st.DrawFn) -> str:
    """A URL that must never be allowed: each trick leaves (or hides) the allowed prefix."""
    trick = draw(
        st.sampled_from(
            [
                "https://user@hooks.example.com/hooks",
                "https://user:pw@hooks.example.com/hooks/x",
                "https://hooks.example.com@evil.example/hooks",
                "https://hooks.example.com:443@evil.example/hooks",
                "https://evil.example#@hooks.example.com/hooks",
                "https://evil.example?@hooks.example.com/hooks",
                "https://evil.example\\@hooks.example.com/hooks",
                "https://hooks.example.com.evil.example/hooks",
                "https://evilhooks.example.com/hooks",
                "https://hooks.example.com/hooks-evil",
                "https://hooks.example.com/hooksx/y",
                "https://hooks.example.com/Hooks",
                "https://hooks.example.com/hooks/../admin",
                "https://hooks.example.com/hooks/%2e%2e/admin",
                "https://hooks.example.com/hooks/%2E%2E",
                "https://hooks.example.com/hooks/x/../../admin",
                "https://hooks.example.com/hooks/..",
                "https://hooks.example.com/hooks/./..",
                "https://hooks.example.com/hooks/..%2Fadmin",
                "https://hooks.example.com/hooks%2F..%2Fadmin",
                "https://hooks.example.com/hooks/%252e%252e/admin",
                "https://hooks.example.com/hooks/..;/admin",
                "https://hooks.example.com/hooks/\uff0e\uff0e/admin",
                "https://hooks.example.com\\hooks",
                "https://hooks.example.com:8443/hooks",
                "https://hooks.example.com:444/hooks",
                "http://hooks.example.com/hooks",
                "ftp://hooks.example.com/hooks",
                "//hooks.example.com/hooks",
                "hooks.example.com/hooks",
                "https:/hooks.example.com/hooks",
                "https:///hooks.example.com/hooks",
                "https://hooks.example.com /hooks",
                " https://hooks.example.com/hooks",
                "https://hooks.example.com/hooks\n",
                "https://hooks.example.com/ho\x00oks",
                "https://hooks.ex\u0430mple.com/hooks",
                "https://[2001:db8::1]/cb",
                "http://[2001:db8::1]:8080/cb/../x",
                "http://[2001:db8::2]:8080/cb",
                "http://[2001:db8::1%25eth0]:8080/cb",
                "http://[::ffff:2001:db8]:8080/cb",
                "http://2001:db8::1:8080/cb",
                "https://open.example.org:8443/",
                "https://open.example.org.evil.example/",
                "https://user@open.example.org/",
            ]
        )
    )
    suffix = draw(st.sampled_from(["", "?q=1", "#f"]))
    return trick + suffix if "\n" not in trick and "#" not in trick else trick


URL_PIECES = st.sampled_from(
    [
        "https://", "http://", "HTTPS://", "//", ":", "@", "[", "]", "::1", "2001:db8::1",
        "hooks.example.com", "HOOKS.EXAMPLE.COM", "open.example.org", ".", "..", "/", "\\",
        "%2e", "%2E", "%2f", "%2F", "%25", "%", "%zz", "?", "#", ";", ":443", ":80", ":8080",
        ":0", ":99999", "hooks", "cb", "user", "\u0130", "\uff0e", " ", "\t", "\x00", "~",
    ]
)  # fmt: skip


@PROPERTY_SETTINGS
@given(url=st.lists(URL_PIECES, max_size=12).map("".join) | st.text(max_size=60))
def test_any_callback_url_is_202_or_400_and_stays_under_the_allowlist(
    dead_letters: Path, url: str
) -> None:
    check_callback(build_server(dead_letters, callback_allowlist=ALLOWLIST), url)


@PROPERTY_SETTINGS
@given(case=disguised_allowed_url())
@example(
    case=(
        "HTTPS://HOOKS.example.COM.:443/./hooks/zz/../%64one?x=1#f",
        "https://hooks.example.com/hooks/done?x=1",
    )
)
@example(case=("http://[2001:DB8:0:0:0:0:0:1]:8080/cb", "http://[2001:db8::1]:8080/cb"))
def test_disguised_allowed_urls_are_called_normalised(
    dead_letters: Path, case: tuple[str, str]
) -> None:
    url, canonical = case
    status, called = check_callback(build_server(dead_letters, callback_allowlist=ALLOWLIST), url)
    assert status == 202, url
    assert called == canonical


@PROPERTY_SETTINGS
@given(url=hostile_url())
def test_hostile_callback_urls_are_refused(dead_letters: Path, url: str) -> None:
    status, _ = check_callback(build_server(dead_letters, callback_allowlist=ALLOWLIST), url)
    assert status == 400, url


# -- jobId validation ----------------------------------------------------------------------

#: Unicode White_Space beyond the C0 controls: what Go's ``unicode.IsSpace`` calls a space.
SPACES = " \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" + (
    "\u2028\u2029\u202f\u205f\u3000"
)
CONTROLS = "".join(map(chr, range(0x20))) + "\x7f"


def _go_decoded(text: str) -> str:
    """What a JSON decoder makes of ``text`` sent as ``\\u`` escapes (lone surrogates: U+FFFD)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _job_id_valid(job_id: str) -> bool:
    return (
        len(job_id) <= 256
        and not any(c in CONTROLS for c in job_id)
        and not (job_id and all(c in SPACES or c in CONTROLS for c in job_id))
    )


JOB_IDS = (
    st.text(max_size=40)
    | st.text(alphabet=st.sampled_from(SPACES + CONTROLS + "a./"), max_size=6)
    | st.builds(lambda n, c: c * n, st.integers(250, 262), st.sampled_from("x\u00e9\U0001f389 "))
    | st.text(alphabet=st.characters(codec="utf-8"), min_size=250, max_size=262)
    | st.text(alphabet=st.characters(categories=["Cs", "Ll", "Zs"]), max_size=8)
)


@PROPERTY_SETTINGS
@given(job_id=JOB_IDS)
@example(job_id="x" * 256)
@example(job_id="x" * 257)
@example(job_id=" \u3000")
@example(job_id="\ud83d\ude00" * 200)  # a pair per emoji once decoded: 200 characters
def test_job_id_is_validated_exactly(dead_letters: Path, job_id: str) -> None:
    server = build_server(dead_letters)
    # ensure_ascii: lone surrogates travel as \\u escapes, as a Go or JS client would send them.
    body = json.dumps({"jobId": job_id}).encode()

    async def post(client: httpx.AsyncClient, _: Any) -> httpx.Response:
        return await client.post("/run/greet", content=body)

    response = run_with_client(server, post)
    received = _go_decoded(job_id)
    if not received:
        assert response.status_code == 200
        assert len(response.json()["jobId"]) == 36  # a fresh UUID
    elif _job_id_valid(received):
        assert response.status_code == 200, (received, response.text)
        assert response.json()["jobId"] == received
    else:
        assert response.status_code == 400, (received, response.text)
        assert response.json() == {"error": "invalid jobId"}


# -- params over HTTP (what tests/test_params.py does not cover: the JSON trip) -------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
ACCESSORS = ("str", "int", "float", "bool", "time")


def _expected_kind(accessor: str, value: Any) -> bool:
    """Whether ``accessor`` accepts the JSON ``value`` (an independent model of Params)."""
    if accessor == "str":
        return isinstance(value, str)
    if accessor == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if accessor == "int":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if accessor == "float":
        return isinstance(value, (int, float)) and math.isfinite(float(value))
    return isinstance(value, str)  # time: only strings may parse


def _params_server(dead_letters: Path) -> funtask.Server:
    server = build_server(dead_letters)

    @server.task
    async def inspect(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        accepted: dict[str, list[str]] = {}
        for key in params:
            accepted[key] = []
            for accessor in ACCESSORS:
                try:
                    getattr(params, accessor)(key)
                except funtask.ParamError:
                    continue
                accepted[key].append(accessor)
            reader = params.reader()
            for accessor in ACCESSORS:
                getattr(reader, accessor)(key)
            assert (reader.err() is None) == (len(accepted[key]) == len(ACCESSORS))
        missing = params.reader()
        missing.int("\x00 absent")
        assert missing.err() is not None
        return funtask.ok().with_data("raw", params.raw()).with_data("accepted", accepted)

    return server


@PROPERTY_SETTINGS
@given(params=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_params_arrive_as_sent_and_accessors_only_raise_param_error(
    dead_letters: Path, params: dict[str, Any]
) -> None:
    async def post(client: httpx.AsyncClient, _: Any) -> httpx.Response:
        return await client.post("/run/inspect", json={"params": params})

    response = run_with_client(_params_server(dead_letters), post)
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True, body
    assert body["data"]["raw"] == params
    for key, value in params.items():
        accepted = set(body["data"]["accepted"][key])
        for accessor in ("str", "int", "float", "bool"):
            assert (accessor in accepted) == _expected_kind(accessor, value), (accessor, value)
        if "time" in accepted:
            assert isinstance(value, str)


@PROPERTY_SETTINGS
@given(
    mantissa=st.integers(1, 99),
    exponent=st.integers(290, 420),
    sign=st.sampled_from(["", "-"]),
)
@example(mantissa=1, exponent=400, sign="")
def test_numbers_beyond_float64_are_an_invalid_body(
    dead_letters: Path, mantissa: int, exponent: int, sign: str
) -> None:
    """A JSON number no float64 can hold is refused, as Go's decoder refuses it.

    (Python's ``json`` turns ``1e400`` into ``inf``, which no JSON result can carry.)
    """
    text = f"{sign}{mantissa}e{exponent}"
    body = f'{{"params": {{"x": {text}}}}}'.encode()

    async def post(client: httpx.AsyncClient, _: Any) -> httpx.Response:
        return await client.post("/run/inspect", content=body)

    response = run_with_client(_params_server(dead_letters), post)
    if math.isfinite(float(text)):
        assert response.status_code == 200
        assert response.json()["data"]["raw"] == {"x": float(text)}
    else:
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "invalid request body"}


# -- the result size limit -------------------------------------------------------------------

#: Characters of each UTF-8 width, and ones JSON escapes (``"`` -> 2 bytes, U+0001 -> 6).
FILLERS = ["x", "\u00e9", "\u20ac", "\U0001f389", '"', "\x01"]


def _success_size(job_id: str, data: dict[str, Any]) -> int:
    doc = {"jobId": job_id, "success": True, "duration": "0s", "durationMs": 0, "data": data}
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


@settings(PROPERTY_SETTINGS, max_examples=12)
@given(
    offset=st.integers(-40, 40),
    filler=st.sampled_from(FILLERS),
    tail=st.text(max_size=3),
)
@example(offset=0, filler="x", tail="")
@example(offset=1, filler="x", tail="")
def test_results_around_10_mib(dead_letters: Path, offset: int, filler: str, tail: str) -> None:
    job_id = "big"
    base = _success_size(job_id, {"blob": tail})
    unit = _success_size(job_id, {"blob": filler}) - _success_size(job_id, {"blob": ""})
    text = filler * ((MAX_RESULT_SIZE + offset - base) // unit) + tail
    size = _success_size(job_id, {"blob": text})
    server = build_server(dead_letters)

    @server.task
    async def big(run: funtask.Run, params: funtask.Params) -> funtask.Result:
        run.step("exporting")
        return funtask.ok().with_data("blob", text)

    async def post(client: httpx.AsyncClient, _: Any) -> tuple[httpx.Response, httpx.Response]:
        response = await client.post("/run/big", json={"jobId": job_id})
        return response, await client.get(f"/result/{job_id}")

    response, stored = run_with_client(server, post)
    assert response.status_code == 200
    assert stored.status_code == 200
    assert stored.content == response.content
    body = response.json()
    if size <= MAX_RESULT_SIZE:
        assert len(response.content) == size
        assert body["success"] is True
        assert body["data"]["blob"] == text
    else:
        assert body == {
            "jobId": job_id,
            "success": False,
            "duration": "0s",
            "durationMs": 0,
            "error": {
                "code": "result_too_large",
                "message": "result exceeds maximum size (10 MB)",
                "step": "exporting",
            },
        }
