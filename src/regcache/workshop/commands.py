"""The `lint` and `pin PATH…` commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from regcache.workshop.lint import exit_status, lint
from regcache.workshop.pin import Options, PinError, mirror_host, plan, write_atomically
from regcache.workshop.report import FORMATS, render
from regcache.workshop.rules import Rule, find_rule


def _rule(key: str) -> Rule:
    try:
        return find_rule(key)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def lint_files(args: argparse.Namespace) -> int:
    """Print the findings for workshop files and directories; the status says how bad."""
    findings = lint(args.paths, only=args.rules, ignore=args.ignore)
    print(render(findings, args.format))
    return exit_status(findings, strict=args.strict)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `lint` to the regcache command line."""
    sub = commands.add_parser(
        "lint",
        help="check workshop files for images that hit Docker Hub, mutable tags and secrets",
        description="Exit status: 0 clean (warnings allowed), 1 warnings with --strict, 2 errors.",
    )
    sub.add_argument(
        "paths", nargs="+", type=_existing, metavar="PATH", help="files or directories"
    )
    sub.add_argument("--format", choices=FORMATS, default="text", help="report format (text)")
    sub.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    sub.add_argument("--rule", dest="rules", action="append", type=_rule, default=[],
                     metavar="ID", help="only this rule (id or name; repeatable)")  # fmt: skip
    sub.add_argument("--ignore", action="append", type=_rule, default=[], metavar="ID",
                     help="not this rule (id or name; repeatable)")  # fmt: skip
    sub.set_defaults(handler=lint_files)


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `pin` that rewrite workshop files (`--url` and `--json` are the admin
    commands' own)."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print a unified diff of each file, write nothing")  # fmt: skip
    parser.add_argument("--to-mirror", metavar="HOST",
                        help="also rewrite Docker Hub references to the regcache at HOST "
                        "(HOST/docker.io/library/nginx:1.25@sha256:…)")  # fmt: skip
    parser.add_argument("--direct", action="store_true",
                        help="resolve tags at each image's own registry, not the regcache at "
                        "--url")  # fmt: skip
    parser.add_argument("--plain-http", action="store_true",
                        help="with --direct: http, not https, for registries other than "
                        "Docker Hub")  # fmt: skip


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def pin_files(args: argparse.Namespace) -> int:
    """Rewrite mutable tags in workshop files to tag@digest; exit 1 when a reference could
    not be pinned (the others are)."""
    url = args.url.rstrip("/")
    if not args.direct and not url.startswith(("http://", "https://")):
        raise PinError(f"--url must start with http:// or https://, not {url!r}")
    mirror = mirror_host(args.to_mirror) if args.to_mirror else None
    options = Options(url, direct=args.direct, plain_http=args.plain_http, mirror=mirror)
    result = plan([Path(target) for target in args.targets], options)
    problems = [str(failure) for failure in result.failures]
    changes = list(result.changes)
    for change in [] if args.dry_run else result.changes:
        try:
            write_atomically(change.path, change.after)
        except OSError as exc:
            problems.append(f"{change.path}: not written: {exc.strerror or exc}")
            changes.remove(change)
    edits = [edit for change in changes for edit in change.edits]
    done, would = ("rewrote", "would rewrite") if mirror else ("pinned", "would pin")
    if args.json:
        print(json.dumps([edit.to_json() for edit in edits], indent=2))
    elif args.dry_run:
        print("".join(change.diff() for change in changes), end="")
    else:
        for change in changes:
            print(f"{change.path}: {done} {_plural(len(change.edits), 'reference')}")
    total = f"{_plural(len(edits), 'reference')} in {_plural(len(changes), 'file')}"
    quiet = args.json or args.dry_run  # the diff or the JSON alone on stdout
    print(f"{would if args.dry_run else done} {total}", file=sys.stderr if quiet else sys.stdout)
    for problem in problems:
        print(f"regcache: {problem}", file=sys.stderr)
    return 1 if problems else 0
