"""Command line: ``python -m funtask serve module:server [--bind HOST:PORT]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``funtask`` command line."""
    parser = argparse.ArgumentParser(prog="python -m funtask")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve module:server over HTTP until SIGTERM")
    serve.add_argument("server", help="the Server to serve, as module:attribute")
    serve.add_argument(
        "--bind",
        action="append",
        help="address to listen on, HOST:PORT (repeatable; default 127.0.0.1:8080)",
    )
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = load_server(args.server)
    server.run(args.bind or ["127.0.0.1:8080"])


if __name__ == "__main__":
    main()
