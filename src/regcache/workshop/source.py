"""A scanned file's text, and where a piece of text is written in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """The lines of one file (without line ends), for exact positions."""

    path: Path
    lines: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> Source | None:
        """The file's lines, or None when it is not UTF-8 text."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return cls(path, tuple(line.removesuffix("\r") for line in text.split("\n")))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def find(self, token: str, line: int, column: int = 1) -> tuple[int, int] | None:
        """1-based (line, column) of the first `token` at or after (line, column)."""
        if not token or "\n" in token:
            return None
        for number in range(max(line, 1), len(self.lines) + 1):
            start = column - 1 if number == line else 0
            index = self.lines[number - 1].find(token, max(start, 0))
            if index >= 0:
                return number, index + 1
        return None
