"""The `warm` and `copy` commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from regcache.transfer.copy import Platform, copy_image
from regcache.transfer.progress import Progress
from regcache.transfer.registry_client import (
    Credentials,
    Endpoint,
    TransferError,
    default_authfile,
    load_authfile,
    parse_location,
)
from regcache.transfer.warm import parse_images, unique, warm_images, workshop_images
from regcache.units import format_size

DEFAULT_URL = "http://127.0.0.1:5000"


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _credentials(text: str) -> Credentials:
    try:
        return Credentials.parse(text)
    except TransferError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _transfer_options() -> argparse.ArgumentParser:
    """Options that copy and warm share."""
    parser = argparse.ArgumentParser(add_help=False)
    platforms = parser.add_mutually_exclusive_group()
    platforms.add_argument(
        "--all-platforms",
        action="store_true",
        help="every platform of a multi-arch image (the default)",
    )
    platforms.add_argument(
        "--platform",
        action="append",
        type=Platform.parse,
        metavar="OS/ARCH[/VARIANT]",
        help="only this platform (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=4, metavar="N", help="blobs moved at once (4)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    parser.add_argument(
        "--authfile",
        type=Path,
        metavar="FILE",
        help="docker config.json with credentials (REGISTRY_AUTH_FILE, ~/.docker/config.json)",
    )
    return parser


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `warm` and `copy` to the regcache command line."""
    shared = _transfer_options()
    copy = commands.add_parser(
        "copy",
        parents=[shared],
        help="copy an image between registries, digests unchanged",
        description="Copy an image, all its platforms and its referrers, from one registry to "
        "another. Images are [http://|https://]HOST/REPOSITORY[:TAG|@DIGEST] or Docker Hub "
        "names; without a scheme, https (http with --plain-http).",
    )
    copy.add_argument("source", metavar="SRC", help="image to copy")
    copy.add_argument("destination", metavar="DST", help="where to (tag defaults to SRC's)")
    copy.add_argument("--src-creds", type=_credentials, metavar="USER:PASS")
    copy.add_argument("--dest-creds", type=_credentials, metavar="USER:PASS")
    for side in ("src", "dest"):
        copy.add_argument(
            f"--{side}-tls-verify",
            type=_boolean,
            nargs="?",
            const=True,
            default=True,
            metavar="BOOL",
            help="verify TLS certificates (true)",
        )
    copy.add_argument("--insecure", action="store_true", help="verify no TLS certificate")
    copy.add_argument(
        "--plain-http", action="store_true", help="http for images given without a scheme"
    )
    copy.set_defaults(handler=copy_command)

    warm = commands.add_parser(
        "warm",
        parents=[shared],
        help="pull images through a regcache to fill it",
        description="Pull images through a regcache, by its prefixed names "
        "(nginx:1.25.3 is /v2/docker.io/library/nginx), so that it holds them.",
    )
    warm.add_argument("images", nargs="*", metavar="IMAGE", help="image references")
    warm.add_argument(
        "--from",
        dest="from_paths",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        help="workshop files or directories to take images from",
    )
    warm.add_argument(
        "--url",
        default=os.environ.get("REGCACHE_URL", DEFAULT_URL),
        help=f"regcache to fill (REGCACHE_URL, {DEFAULT_URL})",
    )
    warm.add_argument(
        "--creds",
        type=_credentials,
        metavar="USER:PASS",
        help="credentials for the regcache, if it asks",
    )
    warm.add_argument(
        "--tls-verify",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="verify the regcache's TLS certificate (true)",
    )
    warm.set_defaults(handler=warm_command)


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a command; a failure is one line on stderr and exit status 1."""
    try:
        return asyncio.run(coroutine)
    except (TransferError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        print(f"regcache: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("regcache: interrupted", file=sys.stderr)
        return 130


def _jobs(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise TransferError("--jobs must be at least 1")
    return int(args.jobs)


def copy_command(args: argparse.Namespace) -> int:
    async def main() -> int:
        src = parse_location(
            args.source,
            plain_http=args.plain_http,
            credentials=args.src_creds,
            tls_verify=args.src_tls_verify and not args.insecure,
            authfile=args.authfile,
        )
        dst = parse_location(
            args.destination,
            plain_http=args.plain_http,
            credentials=args.dest_creds,
            tls_verify=args.dest_tls_verify and not args.insecure,
            authfile=args.authfile,
        )
        progress = Progress.choose(quiet=args.quiet)
        try:
            result = await copy_image(
                src, dst, platforms=args.platform, jobs=_jobs(args), progress=progress
            )
            progress.line(
                f"copied {src} to {dst.endpoint.url}/{dst.repository}@{result.digest}: "
                f"{result.summary()}, {format_size(result.sent_bytes)} sent"
            )
        finally:
            progress.close()
        return 0

    return _run(main())


def warm_command(args: argparse.Namespace) -> int:
    async def main() -> int:
        refs = unique([*parse_images(args.images), *workshop_images(args.from_paths)])
        if not refs:
            raise TransferError("no images to warm: name some, or --from a workshop")
        url = args.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TransferError(f"--url must start with http:// or https://, not {url!r}")
        creds = args.creds or load_authfile(args.authfile or default_authfile()).get(
            urlsplit(url).netloc
        )
        progress = Progress.choose(quiet=args.quiet)
        try:
            result = await warm_images(
                refs,
                Endpoint(url, args.tls_verify, creds),
                platforms=args.platform,
                jobs=_jobs(args),
                progress=progress,
            )
            progress.line(
                f"warmed {result.images} of {len(refs)} images through {url}: "
                f"{result.blobs} blobs, {format_size(result.bytes)}"
            )
        finally:
            progress.close()
        for failure in result.failures:
            print(f"regcache: {failure}", file=sys.stderr)
        return 1 if result.failures else 0

    return _run(main())
