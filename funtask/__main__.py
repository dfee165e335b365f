"""Command line: the ``funtask`` console script, or ``python -m funtask``.

- ``python -m funtask serve module:server [--bind HOST:PORT]``: serve until SIGTERM.
- ``python -m funtask dead-letters list DIR``: show what is waiting in a dead-letter dir.
- ``python -m funtask dead-letters replay DIR (--to URL | --callback-from-file)``: redeliver.
- ``python -m funtask store status --store URL [--name NAME]``: instances, running jobs
  and stored results of a store.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

import trio

from ._server import Server

__all__ = ["load_server", "main"]


def load_server(spec: str) -> Server:
    """Import ``module:attribute`` (default attribute ``server``) and return the Server."""
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise SystemExit(f"funtask: invalid server spec {spec!r} (expected module:attribute)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"funtask: cannot import {module_name!r}: {exc}") from None
    server = getattr(module, attribute or "server", None)
    if not isinstance(server, Server):
        raise SystemExit(f"funtask: {spec!r} is not a funtask.Server (got {server!r})")
    return server


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve module:server over HTTP until SIGTERM")
    serve.add_argument("server", help="the Server to serve, as module:attribute")
    serve.add_argument(
        "--bind",
        action="append",
        help="address to listen on, HOST:PORT (repeatable; default 127.0.0.1:8080)",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="where job state lives: memory, sqlite:PATH or redis://... (default $FUNTASK_STORE)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default) or as one JSON object per line",
    )
    letters = commands.add_parser("dead-letters", help="inspect or redeliver dead letters")
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list the dead letters in DIR")
    listing.add_argument("directory")
    replay = actions.add_parser("replay", help="POST each dead letter once; remove it on 2xx")
    replay.add_argument("directory")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="URL", help="POST every dead letter to URL")
    target.add_argument(
        "--callback-from-file",
        action="store_true",
        help="POST each dead letter to the callback URL recorded in it",
    )
    replay.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per attempt (default 30)"
    )
    replay.add_argument(
        "--signing-secret-env",
        metavar="VAR",
        help="sign with the Standard Webhooks secret in environment variable VAR",
    )
    replay.add_argument(
        "--include-superseded",
        action="store_true",
        help="also send letters whose job another process settled first",
    )
    store = commands.add_parser("store", help="inspect a result store")
    store_actions = store.add_subparsers(dest="action", required=True)
    status = store_actions.add_parser(
        "status", help="list instances, running jobs and counts of stored results"
    )
    status.add_argument("--store", metavar="URL", help="the store URL (default $FUNTASK_STORE)")
    status.add_argument(
        "--name", help="the server name (a Redis pool is the server name plus the store)"
    )
    return parser


def _store_status(args: argparse.Namespace) -> int:
    from ._stores.status import format_status, read_store_status
    from ._stores.url import ENV_STORE, parse_store_url

    value = args.store or os.environ.get(ENV_STORE)
    if not value:
        print(f"funtask: --store URL or ${ENV_STORE} required", file=sys.stderr)
        return 2
    try:
        url = parse_store_url(value)
    except ValueError as exc:
        print(f"funtask: {exc}", file=sys.stderr)
        return 2
    try:
        status = read_store_status(url, name=args.name)
    except (ValueError, OSError) as exc:
        print(f"funtask: {exc}", file=sys.stderr)
        return 2
    print(format_status(status))
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from ._replay import format_listing, replay_dead_letters

    if not os.path.isdir(args.directory):
        print(f"funtask: {args.directory!r} is not a directory", file=sys.stderr)
        return 2
    if args.action == "list":
        text, invalid = format_listing(args.directory)
        print(text)
        return 1 if invalid else 0
    secret = None
    if args.signing_secret_env:
        secret = os.environ.get(args.signing_secret_env)
        if not secret:
            print(f"funtask: ${args.signing_secret_env} is not set", file=sys.stderr)
            return 2
    report = trio.run(
        partial(
            replay_dead_letters,
            args.directory,
            to=args.to,
            timeout=args.timeout,
            signing_secret=secret,
            include_superseded=args.include_superseded,
        )
    )
    for path in report.delivered:
        print(f"delivered\t{path.name}")
    for path, problem in report.failed:
        print(f"failed\t{path.name}\t{problem}")
    for path, problem in report.skipped:
        print(f"skipped\t{path.name}\t{problem}")
    print(
        f"{len(report.delivered)} delivered, {len(report.failed)} failed, "
        f"{len(report.skipped)} skipped"
    )
    return 0 if not report.failed and not report.skipped else 1


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        from ._logjson import JSONFormatter

        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: Sequence[str] | None = None, *, prog: str = "funtask") -> None:
    """Run the ``funtask`` command line; ``prog`` is how it was invoked (for ``--help``)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    level = args.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"--log-level: unknown level {args.log_level!r}")
    _configure_logging(level, getattr(args, "log_format", "text"))
    if args.command == "dead-letters":
        raise SystemExit(_dead_letters(args))
    if args.command == "store":
        raise SystemExit(_store_status(args))
    server = load_server(args.server)
    if args.store is not None:
        server.settings.store = args.store
    server.run(args.bind or ["127.0.0.1:8080"])


if __name__ == "__main__":
    main(prog="python -m funtask")
