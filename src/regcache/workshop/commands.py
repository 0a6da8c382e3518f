"""The `lint` and `pin PATH…` commands (placeholder wiring, being written)."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `lint` to the regcache command line."""


def add_pin_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `pin` that rewrite workshop files."""
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--to-mirror", metavar="HOST")


def pin_files(args: argparse.Namespace) -> int:
    """Rewrite mutable tags in workshop files to tag@digest."""
    raise NotImplementedError
