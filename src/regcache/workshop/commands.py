"""The `lint` and `pin PATH…` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from regcache.workshop.lint import exit_status, lint
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
    """The options of `pin` that rewrite workshop files."""
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--to-mirror", metavar="HOST")


def pin_files(args: argparse.Namespace) -> int:
    """Rewrite mutable tags in workshop files to tag@digest."""
    raise NotImplementedError
