"""The `warm` and `copy` commands (placeholder wiring, being written)."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `warm` and `copy` to the regcache command line."""
