"""The spool's directory: a host-local, content-addressed store of blobs, shared by every
process of the host (a worker's prefork children are separate processes).

Layout, one directory per digest algorithm::

    <root>/.lock                 the directory lock: held briefly to account the budget or sweep
    <root>/sha256/<hex>          a complete blob, verified against its digest
    <root>/sha256/<hex>.partial  a blob being written by the holder of ...
    <root>/sha256/<hex>.lock     ... an exclusive ``flock``; the writer records its size in it

Only the holder of ``<hex>.lock`` writes ``<hex>.partial``, and renames it to ``<hex>`` once it
hashes to the digest, so a complete entry is never anything but the blob. The kernel drops a
lock when its process dies, whatever killed it: a partial file whose lock is free is a dead
writer's, and whoever sees it may remove it. A lock file is unlinked only by a holder of its lock,
and whoever takes a lock checks the path still names the file it locked (else takes it again), so
two writers never hold "the" lock of one digest.

Everything here is blocking file-system work, small and quick except :meth:`SpoolStore.reserve`
(which may wait for the directory lock): the async side (:mod:`registry.spool`) runs that in a
thread. The budget counts complete entries by size and partial ones by the size their writers
declared; entries idle past ``idle`` seconds (by modification time, which a reader refreshes) are
removed, and the oldest go first when a new blob needs room.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# What a digest must look like to name a file: anything else is never spooled (no path tricks).
_DIGEST = re.compile(r"(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128})")
_PARTIAL, _LOCK = ".partial", ".lock"


class SpoolUnusable(OSError):
    """The directory cannot be trusted or used (owned by another user, writable by others)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """The paths of one digest's entry."""

    complete: Path
    partial: Path
    lock: Path


@dataclass(frozen=True, slots=True)
class _Seen:
    complete: dict[Path, os.stat_result]
    partials: list[Path]
    locks: list[Path]


class SpoolStore:
    """One spool directory; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str], budget: int, *, idle: float) -> None:
        self.root = Path(root)
        self.budget = budget
        self.idle = idle
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.root.lstat()
        # Readers trust a complete entry without hashing it again: nobody else may write here.
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise SpoolUnusable(f"spool directory {self.root} is not a directory of this user's "
                                "that only it may write")

    def entry(self, digest: str) -> Entry | None:
        """The paths for ``digest``, or None when it is not a digest we spool."""
        found = _DIGEST.fullmatch(digest)
        if found is None:
            return None
        algorithm, hexdigest = found.group(1) or found.group(3), found.group(2) or found.group(4)
        base = self.root / algorithm / hexdigest
        return Entry(base, base.with_name(hexdigest + _PARTIAL), base.with_name(hexdigest + _LOCK))

    # -- one entry's lock ------------------------------------------------------------------------

    def try_lock(self, entry: Entry) -> int | None:
        """A descriptor holding ``entry``'s lock, or None while another holds it."""
        entry.lock.parent.mkdir(mode=0o700, exist_ok=True)
        for _ in range(8):
            fd = os.open(entry.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not _flock(fd, fcntl.LOCK_EX):
                os.close(fd)
                return None
            if _same_file(fd, entry.lock):
                return fd
            os.close(fd)  # unlinked by its last holder after we opened it: take the new one
        return None

    @staticmethod
    def held(entry: Entry) -> bool:
        """Someone holds ``entry``'s lock (a writer is alive)."""
        try:
            fd = os.open(entry.lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            return not _flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)  # closing drops the shared lock, if we got it

    # -- a writer's steps, under the entry's lock ------------------------------------------------

    def reserve(self, entry: Entry, lock_fd: int, size: int) -> int | None:
        """Room for ``size`` bytes, made by evicting if need be: a descriptor of a fresh
        ``.partial`` to write, or None when the blob does not fit (it is then streamed)."""
        if size > self.budget:
            return None
        with self._directory_lock():
            seen = self._scan()
            used = self._tidy(seen, keep=entry)
            by_age = sorted(seen.complete.items(), key=lambda item: item[1].st_mtime)
            while used + size > self.budget and by_age:
                path, info = by_age.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                used -= info.st_size
            if used + size > self.budget:
                return None
            # Declared before the directory lock is let go, so the next writer counts it.
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, str(size).encode(), 0)
            with contextlib.suppress(FileNotFoundError):
                entry.partial.unlink()  # a dead writer's: we hold the lock
            return os.open(entry.partial,
                           os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    @staticmethod
    def publish(entry: Entry, lock_fd: int) -> None:
        """The partial file is the blob: make it the complete entry, and let the lock go."""
        entry.partial.replace(entry.complete)
        SpoolStore.release(entry, lock_fd)

    @staticmethod
    def discard(entry: Entry, lock_fd: int) -> None:
        """The write failed: remove what it wrote, and let the lock go."""
        with contextlib.suppress(FileNotFoundError):
            entry.partial.unlink()
        SpoolStore.release(entry, lock_fd)

    @staticmethod
    def release(entry: Entry, lock_fd: int) -> None:
        """Let the lock go, its file with it (only a holder may unlink it)."""
        try:
            with contextlib.suppress(FileNotFoundError):
                entry.lock.unlink()
        finally:
            os.close(lock_fd)

    # -- readers ---------------------------------------------------------------------------------

    @staticmethod
    def open_complete(entry: Entry) -> int | None:
        """A descriptor of the complete blob (its idle clock restarted), or None."""
        try:
            fd = os.open(entry.complete, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(fd)
        return fd

    @staticmethod
    def open_partial(entry: Entry) -> int | None:
        try:
            return os.open(entry.partial, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    @staticmethod
    def is_file(fd: int, path: Path) -> bool:
        """``path`` names the file open as ``fd`` (a partial file renamed to complete does)."""
        return _same_file(fd, path)

    # -- housekeeping ----------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove dead writers' partial files, idle entries and what is over the budget; the
        bytes left."""
        with self._directory_lock():
            seen = self._scan()
            used = self._tidy(seen, keep=None)
            for path, info in sorted(seen.complete.items(), key=lambda item: item[1].st_mtime):
                if used <= self.budget:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                used -= info.st_size
            return used

    def _tidy(self, seen: _Seen, keep: Entry | None) -> int:
        """Remove stale partials, orphan locks and idle entries from ``seen`` (and the disk);
        the bytes the rest take, partial ones counted at their declared size."""
        used = 0
        for path in seen.partials:
            entry = self.entry_of(path)
            if keep is not None and entry == keep:
                continue
            declared = _declared_size(entry.lock) if self.held(entry) else None
            if declared is None:
                self._remove_dead(entry)
            else:
                used += declared
        for lock in seen.locks:
            entry = self.entry_of(lock)
            if entry.partial not in seen.partials and entry != keep:
                self._remove_dead(entry)  # a writer that died before it wrote, or idle locks
        cutoff = time.time() - self.idle
        for path, info in list(seen.complete.items()):
            if info.st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                del seen.complete[path]
            else:
                used += info.st_size
        return used

    def _remove_dead(self, entry: Entry) -> None:
        fd = self.try_lock(entry)
        if fd is not None:
            self.discard(entry, fd)

    def entry_of(self, path: Path) -> Entry:
        base = path.with_name(path.name.split(".", 1)[0])
        return Entry(base, base.with_name(base.name + _PARTIAL), base.with_name(base.name + _LOCK))

    def _scan(self) -> _Seen:
        seen = _Seen({}, [], [])
        for algorithm in ("sha256", "sha512"):
            folder = self.root / algorithm
            try:
                names = list(folder.iterdir())
            except FileNotFoundError:
                continue
            for path in names:
                hexdigest, _, suffix = path.name.partition(".")
                if _DIGEST.fullmatch(f"{algorithm}:{hexdigest}") is None:
                    continue
                if not suffix:
                    with contextlib.suppress(FileNotFoundError):
                        seen.complete[path] = path.stat()
                elif f".{suffix}" == _PARTIAL:
                    seen.partials.append(path)
                elif f".{suffix}" == _LOCK:
                    seen.locks.append(path)
        return seen

    @contextlib.contextmanager
    def _directory_lock(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # brief: accounting and unlinks, never I/O of blobs
            yield
        finally:
            os.close(fd)


def _flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _declared_size(lock: Path) -> int | None:
    """The size a live writer declared; None when there is no readable declaration (then its
    partial file is not being written: the writer declares before it creates it)."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
