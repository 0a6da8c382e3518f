"""The `regcache` command line: serve, the admin commands, and verify."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from regcache import __version__, logs
from regcache.admin_client import (
    AdminClient,
    AdminError,
    images_table,
    split_reference,
    storage_table,
    table,
)
from regcache.config import ConfigError, Settings, load_settings, split_listen
from regcache.server import create_app
from regcache.server.observability import AccessLogger
from regcache.store.gc import verify
from regcache.transfer import commands as transfer
from regcache.units import format_size, parse_duration, parse_size
from regcache.workshop import commands as workshop

DEFAULT_URL = "http://127.0.0.1:5000"


def _event_loop_factory(settings: Settings) -> None:
    """Install uvloop when chosen (asyncio's own loop is the default: it sends files with
    sendfile, which uvloop's transports do not support)."""
    if settings.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load tls_cert/tls_key: {exc}") from exc
    return context


async def _run(
    app: web.Application, host: str, ports: list[int], tls: ssl.SSLContext | None
) -> None:
    """Serve `app` on every port until SIGTERM or SIGINT."""
    runner = web.AppRunner(
        app, access_log=logging.getLogger("regcache.access"), access_log_class=AccessLogger
    )
    await runner.setup()
    try:
        for port in ports:
            await web.TCPSite(runner, host, port, ssl_context=tls).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, listen=args.listen, data_dir=args.data_dir)
    logs.configure(settings.log_level, settings.log_format)
    _event_loop_factory(settings)
    host, port = split_listen(settings.listen)
    ports = [port, *(p for tenant in settings.tenants for p in tenant.ports)]
    tls = _ssl_context(settings)
    app = create_app(settings)
    logging.getLogger("regcache").info(
        "regcache %s serving %s on %s port %s, data in %s", __version__,
        "https" if tls else "http", host, ", ".join(map(str, ports)), settings.data_dir,
    )  # fmt: skip
    asyncio.run(_run(app, host, ports, tls))
    return 0


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.url, args.token)


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def ls(args: argparse.Namespace) -> int:
    path = "/admin/images" + (f"?pattern={args.pattern}" if args.pattern else "")
    images = _client(args).call("GET", path)["images"]
    return _print(args, images, images_table(images) if images else "no images")


def rm(args: argparse.Namespace) -> int:
    repo, ref = split_reference(args.image)
    query = f"?repository={repo}&ref={ref}"
    result = _client(args).call("DELETE", "/admin/images" + query)
    return _print(
        args, result, f"deleted {result['deleted']}, freed {format_size(result['freed'])}"
    )


def prune(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"dry_run": args.dry_run}
    if args.pattern:
        body["pattern"] = args.pattern
    if args.older_than:
        body["older_than"] = parse_duration(args.older_than)
    if args.down_to:
        body["down_to"] = parse_size(args.down_to)
    result = _client(args).call("POST", "/admin/prune", body)
    verb = "would evict" if result.get("dry_run") else "evicted"
    text = f"{verb} {result['evicted']} images, freed {format_size(result['freed'])}"
    return _print(args, result, "\n".join([text, *result.get("images", [])]))


def _pin(args: argparse.Namespace, pinned: bool) -> int:
    """Pin an image in the cache, or (`pin` with paths) pin a workshop's tags to digests."""
    paths = [Path(target) for target in args.targets]
    if pinned and all(path.exists() for path in paths):
        return workshop.pin_files(args)
    if len(args.targets) != 1 or getattr(args, "dry_run", False):
        raise AdminError(
            f"{args.command} takes one image (REPOSITORY:TAG), or workshop files and directories"
        )
    repo, ref = split_reference(args.targets[0])
    path = "/admin/pin" if pinned else "/admin/unpin"
    result = _client(args).call("POST", path, {"repository": repo, "ref": ref})
    state = "pinned" if pinned else "unpinned"
    return _print(args, result, f"{state} {result['repository']}@{result['digest']}")


def du(args: argparse.Namespace) -> int:
    summary = _client(args).call("GET", "/admin/storage")
    return _print(args, summary, storage_table(summary))


def gc(args: argparse.Namespace) -> int:
    result = _client(args).call("POST", "/admin/gc")
    rows = [[key.replace("_", " "), str(value)] for key, value in result.items()]
    return _print(args, result, table(["GARBAGE COLLECTION", ""], rows))


def verify_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, data_dir=args.data_dir)
    if settings.database_url is None and not (settings.data_dir / "metadata.db").exists():
        raise AdminError(f"{settings.data_dir} holds no regcache store")
    result = verify(
        settings.data_dir,
        repair=args.repair,
        object_storage=settings.object_storage,
        database_url=settings.database_url,
    )
    data = {"ok": result.ok, "checked": result.checked, "bytes": result.bytes,
            "corrupt": result.corrupt, "missing": result.missing,
            "orphan_files": result.orphan_files, "repaired": result.repaired}  # fmt: skip
    lines = [f"checked {result.checked} blobs ({format_size(result.bytes)})"]
    lines += [f"corrupt: {digest}" for digest in result.corrupt]
    lines += [f"missing: {digest}" for digest in result.missing]
    if result.orphan_files:
        lines.append(f"{result.orphan_files} unrecorded files (garbage collection removes them)")
    if not result.ok:
        lines.append("removed" if args.repair else "run with --repair to remove them")
    _print(args, data, "\n".join(lines))
    return 0 if result.ok or args.repair else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regcache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"regcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the registry")
    run.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (0.0.0.0:5000)")
    run.add_argument("--data-dir", type=Path, metavar="PATH", help="storage (./regcache-data)")
    run.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    run.set_defaults(handler=serve)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--url", default=os.environ.get("REGCACHE_URL", DEFAULT_URL),
                       help=f"regcache to manage (REGCACHE_URL, {DEFAULT_URL})")  # fmt: skip
    admin.add_argument("--token", default=os.environ.get("REGCACHE_ADMIN_TOKEN"),
                       help="admin token (REGCACHE_ADMIN_TOKEN)")  # fmt: skip
    admin.add_argument("--json", action="store_true", help="print JSON")
    sub = commands.add_parser("ls", parents=[admin], help="list images")
    sub.add_argument("pattern", nargs="?", help="glob over REPOSITORY or REPOSITORY:TAG")
    sub.set_defaults(handler=ls)
    sub = commands.add_parser("rm", parents=[admin], help="delete an image")
    sub.add_argument("image", help="REPOSITORY:TAG or REPOSITORY@DIGEST")
    sub.set_defaults(handler=rm)
    sub = commands.add_parser("prune", parents=[admin], help="evict cached images")
    sub.add_argument("--pattern", help="only images matching this glob")
    sub.add_argument("--older-than", help="only images not pulled for this long (7d, 12h)")
    sub.add_argument("--down-to", help="evict least recently pulled first down to a size (2GiB)")
    sub.add_argument("--dry-run", action="store_true", help="only list what would go")
    sub.set_defaults(handler=prune)
    for name, pinned in (("pin", True), ("unpin", False)):
        sub = commands.add_parser(name, parents=[admin], help=f"{name} an image")
        sub.add_argument("targets", nargs="+", metavar="IMAGE|PATH",
                         help="REPOSITORY:TAG or REPOSITORY@DIGEST in the cache; or workshop "
                         "files and directories whose tags to pin to digests")  # fmt: skip
        if pinned:
            workshop.add_pin_arguments(sub)
        sub.set_defaults(handler=lambda args, pinned=pinned: _pin(args, pinned))
    sub = commands.add_parser("du", parents=[admin], help="storage used against the quota")
    sub.set_defaults(handler=du)
    sub = commands.add_parser("gc", parents=[admin], help="collect garbage now")
    sub.set_defaults(handler=gc)
    sub = commands.add_parser("verify", help="re-hash every blob of a data directory")
    sub.add_argument("--data-dir", type=Path, metavar="PATH", help="storage (./regcache-data)")
    sub.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    sub.add_argument("--repair", action="store_true", help="remove blobs that do not match")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=verify_command)
    workshop.add_commands(commands)
    transfer.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"regcache: configuration error: {exc}", file=sys.stderr)
        return 2
    except (AdminError, ValueError) as exc:
        print(f"regcache: {exc}", file=sys.stderr)
        return 1
