"""One read of a source blob per host, however many destinations need it at once.

Every destination's copy reads the source blob it uploads. With a :class:`Spool`, the first
reader of a blob on the host becomes its *writer*: it takes the entry's lock
(:mod:`registry.spool_store`) and downloads the blob into the spool at the source's pace, in a
task of its own, hashing it on the way. Every reader, the writer's own upload included, *tails*
the file: it reads what is there, waits while the writer is alive, and ends at the end of the
verified blob. So a slow destination holds back nobody (it reads from disk, at its pace), and
memory stays flat (a chunk per reader; the bytes wait on disk, not in the process).

::

    complete entry? ───yes──▶ read it
        │ no
    lock taken? ──yes, someone writes──▶ tail its .partial ──▶ writer gone? take over (≤ 3 times)
        │ we have it
    GET the source ── no size, or over the budget ──▶ stream it directly, unspooled
        │ fits
    download task → .partial ─verified─▶ rename to complete      and tail it like anyone else

A writer's failure is its local readers' failure (a digest mismatch is a DigestMismatch for each,
and nothing stays behind); readers in other processes see the lock free and no complete entry,
and one of them takes over. Trouble with the spool itself (a full disk) never fails a copy: the
reader falls back to reading the source directly, from where it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from .errors import ConnectionFailed
from .spool_io import CHUNK, BlobBody, SourceBody, download, skip, unless_cancelled
from .spool_store import Entry, SpoolStore
from .threads import in_thread

log = logging.getLogger("fanout.spool")

# How long a reader at the end of what is written waits before looking again, at most.
_MAX_WAIT = 0.02
# Downloads one read may start (the first, then taking over from writers that died) before
# it gives up with a transient error, for the caller's retry.
_MAX_DOWNLOADS = 4
# Entries unused this long are removed.
DEFAULT_IDLE = 300.0


Fetch = Callable[[], AbstractAsyncContextManager[SourceBody]]


class Spool:
    """A host-local spool of source blobs in ``directory``, at most ``budget`` bytes."""

    def __init__(self, directory: str | os.PathLike[str], budget: int, *,
                 idle: float = DEFAULT_IDLE) -> None:
        self.store = SpoolStore(directory, budget, idle=idle)
        self.store.sweep()  # what dead processes left
        # Each download of this process, by entry, from the moment its lock is taken: its
        # outcome (the size, or the error its readers raise).
        self._writers: dict[Entry, asyncio.Future[int]] = {}
        self._downloads: set[asyncio.Task[int]] = set()
        self._swept = time.monotonic()
        self._sweeping: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def open(self, digest: str, fetch: Fetch) -> AsyncIterator[BlobBody]:
        """The blob ``digest`` to read once, through the spool; ``fetch`` opens the source."""
        entry = self.store.entry(digest)
        if entry is None:
            async with fetch() as response:
                yield response
            return
        self._maybe_sweep()
        reader = _Reader(self, entry, digest, fetch)
        try:
            await reader.begin()
            yield reader
        finally:
            await reader.aclose()

    async def aclose(self) -> None:
        """Stop the downloads under way (their partial files are removed)."""
        tasks = [*self._downloads, *([self._sweeping] if self._sweeping else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- writing ----------------------------------------------------------------------------------

    def _claim(self, entry: Entry) -> asyncio.Future[int]:
        """Announce, as soon as its lock is ours, that this process writes ``entry``: readers
        here then follow the download's outcome rather than watch its lock."""
        outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writers[entry] = outcome
        return outcome

    def _unclaim(self, entry: Entry, outcome: asyncio.Future[int]) -> None:
        if self._writers.get(entry) is outcome:
            del self._writers[entry]
        if not outcome.done():
            outcome.cancel()

    def _start_writer(self, entry: Entry, digest: str, lock_fd: int, out_fd: int,
                      source: AsyncExitStack, response: SourceBody, size: int,
                      outcome: asyncio.Future[int]) -> None:
        task = asyncio.ensure_future(
            download(self.store, entry, digest, (lock_fd, out_fd), source, response, size))
        self._downloads.add(task)

        def finished(done: asyncio.Task[int]) -> None:
            self._downloads.discard(done)
            if done.cancelled():
                self._unclaim(entry, outcome)
                return
            if (error := done.exception()) is not None:
                outcome.set_exception(error)
                outcome.exception()  # its readers raise it; with none left it is only a line
                log.info("download of blob %s into the spool failed: %s", digest[:19], error)
            else:
                outcome.set_result(done.result())
            self._unclaim(entry, outcome)

        task.add_done_callback(finished)

    # -- housekeeping -----------------------------------------------------------------------------

    def _maybe_sweep(self) -> None:
        """Now and then, off the event loop: idle entries go even when nothing new is written."""
        now = time.monotonic()
        if now - self._swept < self.store.idle / 4 or (
                self._sweeping is not None and not self._sweeping.done()):
            return
        self._swept = now

        async def sweep() -> None:
            try:
                await asyncio.to_thread(self.store.sweep)
            except OSError as exc:
                log.warning("spool sweep of %s failed: %s", self.store.root, exc)

        self._sweeping = asyncio.ensure_future(sweep())


class _Reader:
    """One read of one blob through the spool: where its bytes come from may change under it
    (a partial file, the complete entry, a new writer's file, the source itself)."""

    def __init__(self, spool: Spool, entry: Entry, digest: str, fetch: Fetch) -> None:
        self._spool = spool
        self._store = spool.store
        self._entry = entry
        self._digest = digest
        self._fetch = fetch
        self._stack = AsyncExitStack()  # a direct response, while it is read
        self._fd: int | None = None  # the spool file being read
        self._writer: asyncio.Future[int] | None = None  # its writer's outcome, if ours
        self._direct: SourceBody | None = None
        self._spooled = True  # False after trouble with the spool: read the source directly
        self._downloads = 0  # started by this reader: one, and a few more if writers die
        self._complete = False  # the file open is a complete entry
        self._waited = 0.001

    async def begin(self) -> None:
        """Settle where the first bytes come from, so that the source's refusal (404, denied)
        is raised when the blob is opened, as without a spool."""
        await self._settle()

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def aclose(self) -> None:
        self._close_fd()
        await self._stack.aclose()

    async def _chunks(self) -> AsyncIterator[bytes]:
        offset = 0
        while True:
            if self._direct is not None:
                async for piece in skip(self._direct.aiter_bytes(), offset):
                    yield piece
                return
            if self._fd is None:
                await self._settle()
                continue
            try:
                piece = await in_thread(os.pread, self._fd, CHUNK, offset)
            except OSError as exc:
                self._give_up_spool(exc)
                continue
            if piece:
                offset += len(piece)
                self._waited = 0.001
                yield piece
                continue
            state = self._writer_state()
            if state == "writing":
                await self._wait()
            elif state == "finished":
                async for piece in self._drain(offset):
                    yield piece
                return
            else:
                self._close_fd()  # gone: the next settle follows a new writer or takes over

    async def _drain(self, offset: int) -> AsyncIterator[bytes]:
        """The rest of a file its writer has finished."""
        assert self._fd is not None
        while piece := await in_thread(os.pread, self._fd, CHUNK, offset):
            offset += len(piece)
            yield piece

    async def _settle(self) -> None:
        """Open the bytes' next source: the complete entry, a live writer's file, a download of
        our own, or (over the budget, or after trouble with the spool) the source directly."""
        delay = 0.001
        while self._spooled:
            try:
                if await self._open_spooled():
                    return
            except OSError as exc:
                self._give_up_spool(exc)
                break
            # A writer holds the lock but has no file yet (waiting for the source's answer).
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_WAIT)
        self._direct = await self._stack.enter_async_context(self._fetch())

    async def _open_spooled(self) -> bool:
        fd = self._store.open_complete(self._entry)
        if fd is not None:
            self._fd, self._writer, self._complete = fd, None, True
            return True
        lock_fd = self._store.try_lock(self._entry)
        if lock_fd is None:
            self._writer = self._spool._writers.get(self._entry)
            self._fd = self._store.open_partial(self._entry)
            return self._fd is not None
        if (fd := self._store.open_complete(self._entry)) is not None:
            self._store.release(self._entry, lock_fd)  # finished while we took the lock
            self._fd, self._writer, self._complete = fd, None, True
            return True
        await self._start_download(lock_fd)
        return True

    async def _start_download(self, lock_fd: int) -> None:
        """We hold the lock: GET the source; spool it if it fits, else read it directly."""
        self._downloads += 1
        if self._downloads > _MAX_DOWNLOADS:
            self._store.release(self._entry, lock_fd)
            raise ConnectionFailed(f"blob {self._digest[:19]}: {_MAX_DOWNLOADS} downloads into "
                                   "the spool stopped before it was read")
        outcome = self._spool._claim(self._entry)
        source = AsyncExitStack()
        lock: int | None = lock_fd  # ours to let go until someone else owns it
        try:
            response = await source.enter_async_context(self._fetch())
            declared = response.headers.get("content-length", "")
            size = int(declared) if declared.isdigit() else None
            out_fd = None if size is None else await unless_cancelled(
                asyncio.to_thread(self._store.reserve, self._entry, lock_fd, size))
            if size is None or out_fd is None:
                self._spool._unclaim(self._entry, outcome)
                lock = None
                self._store.release(self._entry, lock_fd)
                self._direct = response
                self._stack.push_async_exit(source.pop_all())
                return
            # The download's task owns the lock, the file and the source's answer from here.
            lock = None
            self._spool._start_writer(self._entry, self._digest, lock_fd, out_fd,
                                      source.pop_all(), response, size, outcome)
        except BaseException:
            self._spool._unclaim(self._entry, outcome)
            await source.aclose()
            if lock is not None:
                self._store.release(self._entry, lock)
            raise
        self._writer = outcome
        self._fd = self._store.open_partial(self._entry)
        if self._fd is None:
            raise FileNotFoundError(f"{self._entry.partial} vanished under its writer")

    def _writer_state(self) -> str:
        """``writing``, ``finished`` (every byte is in the file) or ``gone``; raises a local
        writer's error, which is this read's too."""
        assert self._fd is not None
        writer = self._writer
        if self._complete:
            return "finished"
        if writer is not None:
            if not writer.done():
                return "writing"
            if writer.cancelled():
                raise ConnectionFailed(f"the download of blob {self._digest[:19]} was stopped")
            error = writer.exception()
            if isinstance(error, OSError):
                self._give_up_spool(error)  # the spool's own trouble: go to the source
                return "gone"
            if error is not None:
                raise error
        if self._store.is_file(self._fd, self._entry.complete):
            return "finished"
        if (writer is None and self._store.is_file(self._fd, self._entry.partial)
                and self._store.held(self._entry)):
            return "writing"
        # Its writer died, or this was a dead writer's file, or the finished entry has been
        # evicted already: open whatever is there now.
        return "gone"

    async def _wait(self) -> None:
        await asyncio.sleep(self._waited)
        self._waited = min(self._waited * 2, _MAX_WAIT)

    def _give_up_spool(self, exc: OSError) -> None:
        log.warning("spool %s failed (%s); reading blob %s from the source",
                    self._store.root, exc, self._digest[:19])
        self._spooled = False
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._writer, self._complete = None, None, False

