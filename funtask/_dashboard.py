"""Serving the built-in dashboard: one self-contained HTML file shipped in the package.

The page's inline ``<script>`` and ``<style>`` blocks are allowed by their
SHA-256 hashes in a strict Content-Security-Policy, so nothing else can run
and nothing is loaded from another origin. The server's instance name goes
into the page's ``<meta name="funtask-instance">`` tag (data, not code: the
hashes stay as they are); the ETag is computed over the page as served.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Final

__all__ = ["DashboardPage", "dashboard_page", "with_instance"]

_BLOCK: Final = re.compile(rb"<(script|style)(?:\s[^>]*)?>(.*?)</\1>", re.S | re.I)
_INSTANCE_TAG: Final = b'<meta name="funtask-instance" content="">'


@dataclass(frozen=True)
class DashboardPage:
    """The page body with the headers that go with it."""

    body: bytes
    etag: str
    content_security_policy: str


def _hash(content: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(content).digest()).decode() + "'"


def build_page(html: bytes) -> DashboardPage:
    """Compute the ETag and the hash-based CSP for ``html``."""
    scripts = [_hash(body) for kind, body in _BLOCK.findall(html) if kind.lower() == b"script"]
    styles = [_hash(body) for kind, body in _BLOCK.findall(html) if kind.lower() == b"style"]
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(scripts) or "'none'"),
            "style-src " + (" ".join(styles) or "'none'"),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    etag = '"' + hashlib.sha256(html).hexdigest()[:32] + '"'
    return DashboardPage(html, etag, policy)


def with_instance(html_page: bytes, instance: str) -> bytes:
    """``html_page`` with ``instance`` in its ``funtask-instance`` meta tag (escaped)."""
    if html_page.count(_INSTANCE_TAG) != 1:
        raise ValueError("the dashboard page must hold one empty funtask-instance meta tag")
    value = html.escape(instance, quote=True).encode("utf-8", "backslashreplace")
    return html_page.replace(_INSTANCE_TAG, _INSTANCE_TAG[:-2] + value + b'">')


@lru_cache(maxsize=1)
def _packaged_page() -> bytes:
    return files("funtask").joinpath("dashboard.html").read_bytes()


@lru_cache(maxsize=8)
def dashboard_page(instance: str = "") -> DashboardPage:
    """The packaged dashboard page naming ``instance`` (built once per instance)."""
    return build_page(with_instance(_packaged_page(), instance))
