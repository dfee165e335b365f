"""W3C Trace Context headers, checked without OpenTelemetry (SPEC section 6).

A job's trace context is kept as a *carrier*: a dict holding ``traceparent``
and, when there is one, ``tracestate``, exactly as they go out on the
callback POST and into the dead letter's ``deadLetter`` member. These
functions decide whether incoming values are syntactically valid (W3C Trace
Context, level 1); anything invalid is dropped, never forwarded. They import
nothing from OpenTelemetry, so dead-letter replay can use them too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "HeaderLookup",
    "carrier_from_headers",
    "carrier_from_meta",
    "carrier_from_stored",
    "stored_carrier",
    "valid_traceparent",
    "valid_tracestate",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

_MAX_TRACEPARENT: Final = 512  # characters (a future version may add fields)
_MAX_TRACESTATE: Final = 512  # characters, as OpenTelemetry's propagator
_MAX_MEMBERS: Final = 32  # list-members of a tracestate
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-[^\x00-\x1f\x7f]*)?"
)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_KEY: Final = r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
_VALUE: Final = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER_RE: Final = re.compile(f"({_KEY})=(?:{_VALUE})")


class HeaderLookup(Protocol):
    """What the carrier is read from: the request (``funtask._http.exchange.Request``)."""

    def getlist(self, key: str) -> list[str]:
        """Every value of header ``key``, in order."""
        ...


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a syntactically valid ``traceparent`` header value."""
    if len(value) > _MAX_TRACEPARENT:
        return False
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return False
    version, trace_id, span_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return False  # ff is forbidden; version 00 has exactly four fields
    return trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def valid_tracestate(value: str) -> bool:
    """Whether ``value`` is a valid, non-empty ``tracestate`` header value."""
    if len(value) > _MAX_TRACESTATE:
        return False
    if "," not in value:  # one member, the usual case
        return _MEMBER_RE.fullmatch(value.strip(" \t")) is not None
    keys: set[str] = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # empty list-members are allowed
        match = _MEMBER_RE.fullmatch(member)
        if match is None or match.group(1) in keys:
            return False
        keys.add(match.group(1))
    return 0 < len(keys) <= _MAX_MEMBERS


def carrier_from_headers(headers: HeaderLookup) -> dict[str, str] | None:
    """The valid ``traceparent`` (and ``tracestate``) of request ``headers``, or None.

    Two ``traceparent`` fields make it invalid; several ``tracestate`` fields
    are combined with ``,`` (RFC 9110). An invalid ``tracestate`` is dropped
    alone; without a valid ``traceparent`` nothing is kept.
    """
    parents = headers.getlist(TRACEPARENT)
    if len(parents) != 1 or not valid_traceparent(parents[0]):
        return None
    carrier = {TRACEPARENT: parents[0]}
    states = headers.getlist(TRACESTATE)
    if states:
        state = states[0] if len(states) == 1 else ",".join(states)
        if valid_tracestate(state):
            carrier[TRACESTATE] = state
    return carrier


def carrier_from_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """The valid ``traceparent``/``tracestate`` members of a dead letter's meta (maybe none)."""
    parent = meta.get(TRACEPARENT)
    if not isinstance(parent, str) or not valid_traceparent(parent):
        return {}
    carrier = {TRACEPARENT: parent}
    state = meta.get(TRACESTATE)
    if isinstance(state, str) and valid_tracestate(state):
        carrier[TRACESTATE] = state
    return carrier


def stored_carrier(carrier: Mapping[str, str] | None) -> str | None:
    """``carrier`` as the text a store keeps with a job record (None for none)."""
    return json.dumps(dict(carrier), separators=(",", ":")) if carrier else None


def carrier_from_stored(text: str | None) -> dict[str, str] | None:
    """The valid carrier in a job record's stored trace text, or None."""
    if not text:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    return (carrier_from_meta(meta) or None) if isinstance(meta, dict) else None
