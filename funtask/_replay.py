"""Redelivering dead letters: ``python -m funtask dead-letters list|replay DIR``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from ._allowlist import normalize_url, redact_url
from ._callbacks import CallbackSender
from ._deadletters import DeadLetter, callback_body_bytes, remove_dead_letter, scan_dead_letters
from ._signing import signing_key
from ._stores.base import new_webhook_id
from ._threads import run_in_thread

__all__ = ["ReplayReport", "format_listing", "replay_dead_letters"]

logger: Final = logging.getLogger("funtask.replay")


@dataclass
class ReplayReport:
    """What a replay achieved, file by file."""

    delivered: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def format_listing(directory: str) -> tuple[str, int]:
    """A human-readable listing of ``directory``'s dead letters and the count of bad files."""
    letters, invalid = scan_dead_letters(directory)
    lines = [f"{len(letters)} dead letter(s) in {directory}"]
    for letter in letters:
        target = redact_url(letter.callback_url) if letter.callback_url else "(sync result)"
        code = "ok" if letter.body.get("success") else _error_code(letter)
        lines.append(
            f"{letter.path.name}\tjobId={letter.job_id!r}\ttask={letter.task}\t{code}\t"
            f"attempts={letter.attempts}\tlastError={letter.last_error or '-'}\t"
            f"created={letter.created_at}\t{target}"
        )
    for path, problem in invalid:
        lines.append(f"{path.name}\tINVALID: {problem}")
    return "\n".join(lines), len(invalid)


def _error_code(letter: DeadLetter) -> str:
    error = letter.body.get("error")
    return str(error.get("code")) if isinstance(error, dict) else "failed"


async def replay_dead_letters(
    directory: str,
    *,
    to: str | None,
    timeout: float,
    signing_secret: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    include_superseded: bool = False,
) -> ReplayReport:
    """POST every dead letter once, to ``to`` or to the callback URL stored in the file.

    A file is removed only after a 2xx answer; anything else leaves it in place.
    Each letter is sent with the ``webhook-id`` stored in it (the one its
    deliveries used). Superseded letters are skipped unless
    ``include_superseded``.
    """
    report = ReplayReport()
    letters, invalid = await run_in_thread(scan_dead_letters, directory)
    report.skipped.extend(invalid)
    key = None if signing_secret is None else signing_key(signing_secret)
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, timeout=None
    ) as client:
        sender = CallbackSender(client, timeout=timeout, signing_key=key)
        for letter in letters:
            target = normalize_url(to if to is not None else letter.callback_url)
            if target is None:
                report.skipped.append((letter.path, "no valid callback URL (use --to URL)"))
                continue
            if letter.superseded and not include_superseded:
                report.skipped.append((letter.path, "superseded (another process settled it)"))
                continue
            message_id = letter.webhook_id or new_webhook_id()
            outcome = await sender.attempt(target, callback_body_bytes(letter), message_id)
            if outcome.delivered:
                await remove_dead_letter(letter.path)
                report.delivered.append(letter.path)
            else:
                report.failed.append((letter.path, outcome.error))
    return report
