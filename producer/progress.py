"""A live progress display for a terminal: one bar per destination, bytes sent of bytes to send."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)


class LiveProgress:
    """A :class:`registry.results.ProgressSink` drawing on stderr with rich."""

    def __init__(self, destinations: list[str]) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), console=Console(stderr=True), transient=True,
        )
        self._tasks: dict[str, TaskID] = {
            name: self._progress.add_task(name, total=0) for name in destinations
        }

    def expect(self, destination: str, nbytes: int) -> None:
        task = self._tasks.get(destination)
        if task is not None:
            total = self._progress.tasks[task].total or 0
            self._progress.update(task, total=total + nbytes)

    def advance(self, destination: str, nbytes: int) -> None:
        task = self._tasks.get(destination)
        if task is not None:
            self._progress.advance(task, nbytes)

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()
