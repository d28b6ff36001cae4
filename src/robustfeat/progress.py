"""Progress of long work (training, each attack and corruption set, figures), on stderr.

On a terminal: a rich bar with the count, the elapsed time and the time remaining. Elsewhere (a
log file, CI, a cluster job): plain lines, at most one every ``PLAIN_EVERY_PERCENT`` % of the work
or ``PLAIN_EVERY_SECONDS`` s, each with the count, the elapsed time and an ETA; rich's live bars
print nothing there. rich does the terminal bar; the plain lines are ours (rich has none).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

PLAIN_EVERY_PERCENT = 10
PLAIN_EVERY_SECONDS = 60.0
Advance = Callable[..., None]  # advance(n=1, info=None)


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainLines:
    """The non-terminal progress: a line when a ``PLAIN_EVERY_PERCENT`` step or
    ``PLAIN_EVERY_SECONDS`` has passed, and at the end."""

    def __init__(
        self, label: str, total: int, start: int = 0, stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.done = label, max(total, 1), start
        self.start_done, self.stream = start, stream or sys.stderr
        self.started = self.last_time = time.perf_counter()
        self.last_percent = 100 * start // self.total

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        now = time.perf_counter()
        percent = 100 * self.done // self.total
        finished = self.done >= self.total
        if not (
            finished
            or percent >= self.last_percent + PLAIN_EVERY_PERCENT
            or now - self.last_time >= PLAIN_EVERY_SECONDS
        ):
            return
        self.last_percent, self.last_time = percent, now
        elapsed = now - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = clock((self.total - self.done) / rate) if rate > 0 else "?"
        line = f"{self.label} {self.done}/{self.total} ({percent}%) {clock(elapsed)} elapsed"
        line += " done" if finished else f", ETA {eta}"
        print(f"{line}  {info}" if info else line, file=self.stream, flush=True)


@contextlib.contextmanager
def progress_task(
    label: str, total: int, start: int = 0, enabled: bool = True
) -> Iterator[Advance]:
    """``advance(n=1, info=None)`` for ``total`` units of work, ``start`` of them done."""
    if not enabled:
        yield lambda n=1, info=None: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield PlainLines(label, total, start).advance
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total, completed=start, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            if info is None:
                bar.update(task, advance=n)
            else:
                bar.update(task, advance=n, info=info)

        yield advance
