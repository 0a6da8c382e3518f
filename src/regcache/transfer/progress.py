"""Progress of blob transfers: bars on a terminal, one line per item otherwise, or nothing."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Literal, TextIO

from regcache.units import format_size

Mode = Literal["bars", "lines", "quiet"]
REDRAW_INTERVAL = 0.1  # seconds between terminal redraws
MAX_BARS = 8


def _bar(done: int, size: int, width: int) -> str:
    filled = width if size <= 0 else min(width, width * done // size)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Task:
    """One item being moved (a blob or a manifest), `size` bytes long."""

    def __init__(self, progress: Progress, label: str, size: int) -> None:
        self.progress = progress
        self.label = label
        self.size = size
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        self.progress.advance(count)

    def finish(self, outcome: str) -> None:
        """The item is through: `outcome` says how (copied, exists, mounted, pulled)."""
        self.progress.finish(self, outcome)


class Progress:
    """Renders tasks to `stream` in one of three modes; every item counts toward a total."""

    def __init__(self, stream: TextIO, mode: Mode) -> None:
        self.stream = stream
        self.mode = mode
        self.total = 0
        self.done = 0
        self.finished = 0
        self.active: list[Task] = []
        self._drawn = 0
        self._last_draw = 0.0

    @classmethod
    def choose(cls, *, quiet: bool, stream: TextIO = sys.stdout) -> Progress:
        """Bars on a terminal, lines when output is piped or logged, nothing when quiet."""
        return cls(stream, "quiet" if quiet else "bars" if stream.isatty() else "lines")

    def task(self, label: str, size: int) -> Task:
        task = Task(self, label, size)
        self.total += size
        self.active.append(task)
        self._draw()
        return task

    def advance(self, count: int) -> None:
        self.done += count
        self._draw()

    def finish(self, task: Task, outcome: str) -> None:
        """Count a task as through; its bytes count even when none had to move."""
        self.done += task.size - task.done
        self.finished += 1
        self.active.remove(task)
        self.line(f"{task.label}: {outcome} ({format_size(task.size)})")

    def line(self, text: str) -> None:
        """A line that stays (above the bars on a terminal)."""
        if self.mode == "quiet":
            return
        self._erase()
        self.stream.write(text + "\n")
        self._draw(force=True)

    def close(self) -> None:
        """Remove the bars, leaving only the lines."""
        self._erase()
        self.stream.flush()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}A\r\x1b[J")
            self._drawn = 0

    def _draw(self, force: bool = False) -> None:
        if self.mode != "bars":
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL:
            return
        self._last_draw = now
        self._erase()
        width = shutil.get_terminal_size().columns - 1
        lines = [self._row(t.label, t.done, t.size, width) for t in self.active[:MAX_BARS]]
        if len(self.active) > MAX_BARS:
            lines.append(f"  … and {len(self.active) - MAX_BARS} more")
        lines.append(self._row(f"total ({self.finished} done)", self.done, self.total, width))
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    @staticmethod
    def _row(label: str, done: int, size: int, width: int) -> str:
        """`label [####----] done / size`, fitted to `width` columns."""
        amounts = f"{format_size(done):>10} / {format_size(size):<10}"
        label_width = max(10, min(36, width - len(amounts) - 15))
        text = label if len(label) <= label_width else "…" + label[-label_width + 1 :]
        bar_width = max(5, width - label_width - len(amounts) - 4)
        return f"{text:<{label_width}} {_bar(done, size, bar_width)} {amounts}"[:width]
