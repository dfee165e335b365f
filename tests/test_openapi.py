"""The OpenAPI 3.1 document: valid, complete, served without auth, and true to real answers.

Every endpoint and status code of SPEC section 1 is produced here by the
in-process test client, and each answer (status, media type, headers and JSON
body) is checked against the document with ``jsonschema``'s 2020-12 validator
(the dialect of OpenAPI 3.1), ``$ref``s resolved against the whole document.
"""

from __future__ import annotations

import json
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import trio
from openapi_spec_validator import validate as validate_openapi
from trio.testing import MockClock

import funtask
from funtask._asgi_client import ASGIStreamTransport
from funtask.testing import open_test_client

from _support import (
    TOKEN,
    CallbackReceiver,
    add_failer,
    add_raiser,
    add_succeeder,
    build_server,
    first_frame,
    wait_idle,
    wait_until,
)

DOCUMENT: dict[str, Any] = json.loads(files("funtask").joinpath("openapi.json").read_text("utf-8"))
BASE_URI = "urn:funtask:openapi"
REGISTRY: referencing.Registry[Any] = referencing.Registry().with_resource(
    BASE_URI,
    referencing.Resource.from_contents(
        DOCUMENT, default_specification=referencing.jsonschema.DRAFT202012
    ),
)
ALLOW = ["https://hooks.example.com/hooks"]
CALLBACK = "https://hooks.example.com/hooks/done"

#: Every operation of SPEC 1 and the status codes it can answer.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("/run/{task}", "post"): {"200", "202", "400", "401", "404", "409", "413", "503", "504"},
    ("/stop/{task}", "post"): {"200", "401", "404"},
    ("/result/{jobId}", "get"): {"200", "401", "404"},
    ("/health", "get"): {"200", "401"},
    ("/events", "get"): {"200", "401", "503"},
    ("/dashboard", "get"): {"200", "304"},
    ("/livez", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
    ("/metrics", "get"): {"200", "401", "404"},
    ("/openapi.json", "get"): {"200"},
}
OPEN_OPERATIONS = {"/dashboard", "/livez", "/readyz", "/openapi.json"}


# -- helpers -----------------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _resolve(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local ``$ref`` chain; return the target and its JSON pointer."""
    while "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), pointer
        node = DOCUMENT
        for part in pointer[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def _validator(pointer: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": BASE_URI + pointer},
        registry=REGISTRY,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def validate_body(instance: Any, pointer: str) -> None:
    """Validate ``instance`` against the schema at ``pointer`` (all errors in one message)."""
    errors = sorted(_validator(pointer).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, (
        "\n".join(f"{list(error.absolute_path)}: {error.message}" for error in errors)
        + f"\ninstance: {json.dumps(instance)[:2000]}"
    )


def response_spec(path: str, method: str, status: int) -> tuple[dict[str, Any], str]:
    operation = DOCUMENT["paths"][path][method]
    responses = operation["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return _resolve(
        responses[str(status)], _pointer("paths", path, method, "responses", str(status))
    )


def conforms(response: httpx.Response, path: str, method: str, *, body: Any = None) -> Any:
    """Assert ``response`` is documented for the operation; return the parsed JSON body."""
    spec, pointer = response_spec(path, method, response.status_code)
    for name, header in spec.get("headers", {}).items():
        header, header_pointer = _resolve(header, pointer + "/headers/" + name)
        if header.get("required"):
            assert name in response.headers, f"{name} missing"
        if name in response.headers:
            validate_body(response.headers[name], header_pointer + "/schema")
    content = spec.get("content")
    if not content:
        assert response.content == b""
        return None
    media_type = response.headers["content-type"].split(";")[0].strip()
    assert media_type in content, f"{media_type} not in {list(content)}"
    if media_type != "application/json":
        return None
    data = response.json() if body is None else body
    validate_body(data, pointer + "/content/" + media_type.replace("/", "~1") + "/schema")
    return data


def schema_of(name: str) -> str:
    return _pointer("components", "schemas", name)


def test_pointer_resolution_reports_failures() -> None:
    # The helper must actually catch a violation (guards against a validator that accepts all).
    with pytest.raises(AssertionError, match="durationMs"):
        validate_body({"jobId": "x", "success": True, "duration": "1s"}, schema_of("JobResponse"))
    with pytest.raises(AssertionError):
        validate_body(
            {"jobId": "x", "success": False, "duration": "1s", "durationMs": 1},
            schema_of("JobResponse"),
        )
    with pytest.raises(AssertionError):
        validate_body(
            {"error": "nope"},
            _pointer(
                "components", "responses", "Unauthorized", "content", "application/json", "schema"
            ),
        )


# -- the document itself -------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate_openapi(DOCUMENT)


def test_every_endpoint_and_status_is_documented() -> None:
    operations = {
        (path, method): set(operation["responses"])
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete", "head", "options"}
    }
    assert set(operations) == set(EXPECTED)
    for key, statuses in EXPECTED.items():
        missing = statuses - operations[key]
        assert not missing, f"{key} misses {missing}"
    ids = [
        op["operationId"]
        for item in DOCUMENT["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == len(EXPECTED)


def test_security_schemes() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["eventsToken"]["in"] == "query"
    assert schemes["eventsToken"]["name"] == "token"
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            security = operation.get("security", DOCUMENT.get("security"))
            if path in OPEN_OPERATIONS:
                assert security == [], path
            elif path == "/events":
                assert security == [{"bearerAuth": []}, {"eventsToken": []}]
                names = {p["name"] for p in operation["parameters"]}
                assert "token" in names
            else:
                assert security == [{"bearerAuth": []}], path
                assert "401" in operation["responses"], path


def test_task_parameter_component_is_shared() -> None:
    parameter = DOCUMENT["components"]["parameters"]["task"]
    assert parameter["in"] == "path" and parameter["required"] is True
    assert parameter["schema"]["type"] == "string"
    for path in ("/run/{task}", "/stop/{task}"):
        assert {"$ref": "#/components/parameters/task"} in DOCUMENT["paths"][path]["parameters"]


def test_run_request_body_schema() -> None:
    body = DOCUMENT["paths"]["/run/{task}"]["post"]["requestBody"]
    assert body["required"] is False
    pointer = _pointer("components", "schemas", "RunRequest")
    for valid in (
        None,
        {},
        {"jobId": "order-42", "callbackUrl": CALLBACK, "params": {"limit": 100}},
        {"jobId": None, "callbackUrl": None, "params": None},
        {"jobId": "", "unknown": [1]},
        {"jobId": "x" * 256},
        {"jobId": "../../etc/passwd"},
        {"jobId": " a "},
    ):
        validate_body(valid, pointer)
    for invalid in (
        [],
        "text",
        {"jobId": 5},
        {"jobId": "x" * 257},
        {"jobId": " "},
        {"jobId": "\u3000\u00a0"},
        {"jobId": "a\x00b"},
        {"jobId": "a\x7f"},
        {"params": []},
        {"callbackUrl": True},
    ):
        with pytest.raises(AssertionError):
            validate_body(invalid, pointer)


def test_documented_examples_validate() -> None:
    for name, schema in DOCUMENT["components"]["schemas"].items():
        for example in schema.get("examples", []):
            validate_body(example, schema_of(name))


@pytest.mark.parametrize(
    "text", ["0s", "12ms", "1.234s", "59s", "1m2.5s", "2h0m0s", "1h1m1.001s", "1.5\u00b5s"]
)
def test_go_durations_match(text: str) -> None:
    validate_body(text, schema_of("GoDuration"))


@pytest.mark.parametrize("text", ["", "1", "1.s", "s", "1.2.3s", "-1s", "1 s", "1m", "PT1S"])
def test_non_go_durations_do_not_match(text: str) -> None:
    with pytest.raises(AssertionError):
        validate_body(text, schema_of("GoDuration"))


# -- served at /openapi.json -----------------------------------------------------


async def test_served_without_auth(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = build_server(tmp_path)
    async with open_test_client(server, authorized=False) as client:
        response = await client.get("/openapi.json")
    served = conforms(response, "/openapi.json", "get")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert TOKEN not in response.text
    validate_openapi(served)
    assert "testsrv" in served["info"]["title"]
    assert served["components"]["parameters"]["task"]["schema"]["examples"] == ["greet", "sleeper"]
    # Apart from the title and the task examples it is the packaged document.
    served["info"]["title"] = DOCUMENT["info"]["title"]
    del served["components"]["parameters"]["task"]["schema"]["examples"]
    assert served == DOCUMENT


async def test_openapi_rejects_other_methods(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        response = await client.post("/openapi.json")
    assert response.status_code == 405
    _, pointer = _resolve(
        DOCUMENT["components"]["responses"]["MethodNotAllowed"],
        _pointer("components", "responses", "MethodNotAllowed"),
    )
    validate_body(response.json(), pointer + "/content/application~1json/schema")
    assert "GET" in response.headers["allow"]


async def test_unknown_path_matches_not_found(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(build_server(tmp_path)) as client:
        response = await client.get("/no/such/path")
    assert response.status_code == 404
    validate_body(
        response.json(),
        _pointer("components", "responses", "NotFound", "content", "application/json", "schema"),
    )


# -- real answers conform ----------------------------------------------------------


def _server(tmp_path: Path, **config: Any) -> funtask.Server:
    config.setdefault("callback_allowlist", ALLOW)
    server = build_server(tmp_path, **config)
    add_failer(
        server,
        "fails",
        "db_error",
        "connection refused",
        step="connecting",
        description="Always fails after a step",
    )
    add_raiser(server, "raises", lambda: RuntimeError("boom"))
    add_succeeder(server, "empty")
    return server


async def test_run_sync_results_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path)) as client:
        for task, success in (
            ("greet", True),
            ("empty", True),
            ("fails", False),
            ("raises", False),
        ):
            response = await client.post(f"/run/{task}", json={"params": {"name": "Ada"}})
            body = conforms(response, "/run/{task}", "post")
            assert response.status_code == 200
            assert body["success"] is success
        # A duplicate of a stored result answers it again.
        first = await client.post("/run/fails", json={"jobId": "dup"})
        again = await client.post("/run/fails", json={"jobId": "dup"})
        assert conforms(again, "/run/{task}", "post") == conforms(first, "/run/{task}", "post")
        assert again.json()["error"]["step"] == "connecting"


async def test_run_async_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    transport = CallbackReceiver().transport()
    async with open_test_client(_server(tmp_path), callback_transport=transport) as client:
        response = await client.post("/run/greet", json={"callbackUrl": CALLBACK})
        assert response.status_code == 202
        assert set(conforms(response, "/run/{task}", "post")) == {"jobId"}


@pytest.mark.parametrize(
    ("body", "server_config", "message"),
    [
        (b"[", {}, "invalid request body"),
        (b'{"params": 1}', {}, "invalid request body"),
        (
            json.dumps({"callbackUrl": CALLBACK}).encode(),
            {"callback_allowlist": ()},
            "callback URLs not allowed (no allowlist configured)",
        ),
        (b'{"callbackUrl": "https://evil.example.com/"}', {}, "callback URL not allowed"),
        (b'{"jobId": " "}', {}, "invalid jobId"),
    ],
)
async def test_run_400s_conform(
    autojump_clock: MockClock,
    tmp_path: Path,
    body: bytes,
    server_config: dict[str, Any],
    message: str,
) -> None:
    async with open_test_client(_server(tmp_path, **server_config)) as client:
        response = await client.post("/run/greet", content=body)
    assert response.status_code == 400
    assert conforms(response, "/run/{task}", "post") == {"error": message}


async def test_auth_failures_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path), authorized=False) as client:
        for method, url, template in (
            ("POST", "/run/greet", "/run/{task}"),
            ("POST", "/stop/greet", "/stop/{task}"),
            ("GET", "/result/x", "/result/{jobId}"),
            ("GET", "/health", "/health"),
            ("GET", "/events", "/events"),
            ("GET", "/events?token=wrong", "/events"),
            ("GET", "/metrics", "/metrics"),
        ):
            response = await client.request(method, url, headers={"Authorization": "Bearer no"})
            assert response.status_code == 401, url
            assert conforms(response, template, method.lower()) == {"error": "unauthorized"}


async def test_not_found_answers_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path)) as client:
        for method, url, template in (
            ("POST", "/run/nope", "/run/{task}"),
            ("POST", "/stop/nope", "/stop/{task}"),
            ("GET", "/result/nope", "/result/{jobId}"),
            ("GET", "/dashboard", "/dashboard"),  # not enabled
        ):
            response = await client.request(method, url)
            assert response.status_code == 404, url
            conforms(response, template, method.lower())
    async with open_test_client(_server(tmp_path, metrics=False)) as client:
        response = await client.get("/metrics")
        assert response.status_code == 404
        conforms(response, "/metrics", "get")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "text/plain"),
        ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text"),
    ],
)
async def test_metrics_conform(
    autojump_clock: MockClock, tmp_path: Path, accept: str | None, media_type: str
) -> None:
    headers = {"Accept": accept} if accept else {}
    async with open_test_client(_server(tmp_path)) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type
    conforms(response, "/metrics", "get")


async def test_busy_running_stop_and_health_conform(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    sync_answer: list[httpx.Response] = []

    async def run_long(client: httpx.AsyncClient) -> None:
        sync_answer.append(await client.post("/run/sleeper", json={"jobId": "long"}))

    server = _server(tmp_path)
    async with open_test_client(server) as client, trio.open_nursery() as nursery:
        idle = await client.post("/stop/sleeper")
        assert conforms(idle, "/stop/{task}", "post") == {
            "task": "sleeper",
            "message": "No running job",
        }
        await client.post("/run/fails")
        await client.post("/run/greet")
        nursery.start_soon(partial(run_long, client))
        await trio.sleep(2.5)

        same = await client.post("/run/sleeper", json={"jobId": "long"})
        assert conforms(same, "/run/{task}", "post")["status"] == "running"
        busy = await client.post("/run/sleeper", json={"jobId": "other"})
        assert busy.status_code == 409
        assert conforms(busy, "/run/{task}", "post")["currentJob"]["jobId"] == "long"

        health = await client.get("/health")
        document = conforms(health, "/health", "get")
        current = document["tasks"]["sleeper"]["currentJob"]
        assert current["progress"] == {"current": 1, "total": 4, "percent": 25}
        assert current["lastStepAt"].endswith("Z")
        assert document["tasks"]["fails"]["lastJob"]["error"]["code"] == "db_error"
        assert document["tasks"]["fails"]["results"][0]["error"]["step"] == "connecting"

        stop = await client.post("/stop/sleeper")
        assert conforms(stop, "/stop/{task}", "post")["message"] == "Cancellation requested"
        await wait_until(lambda: sync_answer)
    cancelled = conforms(sync_answer[0], "/run/{task}", "post")
    assert cancelled["error"]["code"] == "cancelled"


async def test_health_while_delivering_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _server(tmp_path)
    transport = CallbackReceiver(500).transport()
    async with open_test_client(server, callback_transport=transport) as client:
        accepted = await client.post("/run/greet", json={"callbackUrl": CALLBACK})
        job_id = accepted.json()["jobId"]
        await trio.sleep(0.5)  # between the first attempt and the retry 1 s later
        document = conforms(await client.get("/health"), "/health", "get")
        assert document["tasks"]["greet"]["currentJob"]["delivering"] is True
        stopped = await client.post("/stop/greet")
        assert conforms(stopped, "/stop/{task}", "post")["jobId"] == job_id


async def test_result_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path)) as client:
        await client.post("/run/greet", json={"jobId": "a/b"})
        await client.post("/run/fails", json={"jobId": "f"})
        for url in ("/result/a%2Fb", "/result/f"):
            response = await client.get(url)
            assert response.status_code == 200
            conforms(response, "/result/{jobId}", "get")
        missing = await client.get("/result/none")
        assert conforms(missing, "/result/{jobId}", "get") == {"error": "result not found"}


async def test_sync_timeout_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path, sync_timeout=2)) as client:
        response = await client.post("/run/sleeper", json={"jobId": "slow"})
        assert response.status_code == 504
        body = conforms(response, "/run/{task}", "post")
        assert body["jobId"] == "slow"
        assert "(2s)" in body["error"]
        await wait_idle(client)
        stored = await client.get("/result/slow")
        assert conforms(stored, "/result/{jobId}", "get")["error"]["code"] == "cancelled"


async def test_body_too_large_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path, max_body_size=100)) as client:
        response = await client.post("/run/greet", content=b"{" + b" " * 1000 + b"}")
    assert response.status_code == 413
    assert conforms(response, "/run/{task}", "post") == {"error": "request body too large"}


async def test_draining_answers_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _server(tmp_path)
    async with open_test_client(server) as client:
        assert server._runtime is not None
        server._runtime.begin_draining()
        run = await client.post("/run/greet")
        assert run.status_code == 503
        conforms(run, "/run/{task}", "post")
        events = await client.get("/events")
        assert events.status_code == 503
        conforms(events, "/events", "get")
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        conforms(ready, "/readyz", "get")
        health = conforms(await client.get("/health"), "/health", "get")
        assert health["status"] == "draining"
        assert conforms(await client.post("/stop/greet"), "/stop/{task}", "post")


async def test_without_lifespan_answers_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _server(tmp_path)
    async with trio.open_nursery() as nursery:
        transport = ASGIStreamTransport(server, nursery)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers
        ) as client:
            for method, url, template in (
                ("POST", "/run/greet", "/run/{task}"),
                ("POST", "/stop/greet", "/stop/{task}"),
                ("GET", "/result/x", "/result/{jobId}"),
                ("GET", "/health", "/health"),
                ("GET", "/events", "/events"),
                ("GET", "/readyz", "/readyz"),
                ("GET", "/metrics", "/metrics"),
            ):
                response = await client.request(method, url)
                assert response.status_code == 503, url
                conforms(response, template, method.lower())


async def test_readiness_failure_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    def check() -> None:
        raise ConnectionError("database unreachable")

    async with open_test_client(_server(tmp_path, readiness=check), authorized=False) as client:
        ready = await client.get("/readyz")
        assert conforms(ready, "/readyz", "get") == {"error": "database unreachable"}


async def test_probes_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path), authorized=False) as client:
        for url in ("/livez", "/readyz"):
            response = await client.get(url)
            assert response.status_code == 200
            assert conforms(response, url, "get") == {"status": "ok"}


async def test_events_conform(autojump_clock: MockClock, tmp_path: Path) -> None:
    server = _server(tmp_path, max_event_clients=1)
    async with (
        open_test_client(server, authorized=False) as client,
        client.stream("GET", "/events", params={"token": TOKEN}) as stream,
    ):
        assert stream.status_code == 200
        conforms(stream, "/events", "get")
        first = await first_frame(stream)
        assert first.startswith(b"data: ")
        payload = first[len(b"data: ") :].decode()
        # The media type's schema describes one event; its data is the health document.
        validate_body({"data": payload}, schema_of("HealthEvent"))
        validate_body(json.loads(payload), schema_of("Health"))
        full = await client.get("/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert full.status_code == 503
        assert conforms(full, "/events", "get") == {"error": "too many event streams"}


async def test_dashboard_conforms(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with open_test_client(_server(tmp_path, dashboard=True), authorized=False) as client:
        page = await client.get("/dashboard")
        assert page.status_code == 200
        conforms(page, "/dashboard", "get")
        again = await client.get("/dashboard", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        conforms(again, "/dashboard", "get")
