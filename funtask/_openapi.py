"""The OpenAPI 3.1 description of the HTTP API, shipped as ``openapi.json``."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

__all__ = ["openapi_body", "openapi_document"]


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The packaged OpenAPI document, parsed."""
    document: dict[str, Any] = json.loads(
        files("funtask").joinpath("openapi.json").read_text("utf-8")
    )
    return document


@lru_cache(maxsize=8)
def openapi_body(server_name: str, task_names: tuple[str, ...]) -> bytes:
    """The document for one server: its name as the title and its tasks as the enum of ``task``."""
    document = json.loads(json.dumps(openapi_document()))
    document["info"]["title"] = f"funtask worker {server_name!r}"
    parameters = document.get("components", {}).get("parameters", {})
    if "task" in parameters:
        parameters["task"]["schema"]["examples"] = list(task_names)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")
