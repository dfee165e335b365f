"""Standard Webhooks signatures for callbacks (``webhook-id``, ``-timestamp``, ``-signature``).

The signed content is ``f"{id}.{timestamp}.{body}"``; the signature header is
``v1,`` plus the base64 HMAC-SHA256 of it. A secret given as ``whsec_<base64>``
(the Standard Webhooks format) is base64-decoded; any other ``str`` is used as
its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["signature_headers", "signing_key", "webhook_signature"]

_PREFIX = "whsec_"


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key for a configured ``callback_signing_secret``."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(_PREFIX):
        try:
            return base64.b64decode(secret[len(_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode("utf-8")


def webhook_signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64(HMAC-SHA256(id.timestamp.body))."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one callback attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(key, message_id, timestamp, body),
    }
