"""The `regcache` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from regcache import __version__
from regcache.config import ConfigError, Settings, load_settings, split_listen
from regcache.server import create_app


def _event_loop_factory(settings: Settings) -> None:
    """Install uvloop when chosen (asyncio's own loop is the default: it sends files with
    sendfile, which uvloop's transports do not support)."""
    if settings.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, listen=args.listen, data_dir=args.data_dir)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    _event_loop_factory(settings)
    host, port = split_listen(settings.listen)
    logging.getLogger("regcache").info(
        "regcache %s serving on %s:%d, data in %s", __version__, host, port, settings.data_dir
    )
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        print=None,
        access_log=logging.getLogger("regcache.access"),
        access_log_format='%a "%r" %s %b %Tfs',
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regcache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"regcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the registry")
    run.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (0.0.0.0:5000)")
    run.add_argument("--data-dir", type=Path, metavar="PATH", help="storage (./regcache-data)")
    run.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    run.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"regcache: configuration error: {exc}", file=sys.stderr)
        return 2
