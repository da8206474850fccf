"""An OCI archive written deterministically: the same layout gives the same bytes.

Members in a fixed order (``oci-layout``, ``index.json``, ``blobs/``, ``blobs/<alg>/``, then
blobs sorted by name), each with mtime 0, uid/gid 0, empty user and group names, mode 0644
(directories 0755). Blobs are streamed in and hashed on the way: a damaged one stops the pack.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from .index import OCI_LAYOUT
from .store import CHUNK, BlobStore, blob_name


class _Checked(io.RawIOBase):
    """A blob's bytes as the store gives them, hashed as tarfile reads them."""

    def __init__(self, store: BlobStore, digest: str) -> None:
        self._pieces = store.pieces(digest)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buffer:
            self._buffer = next(self._pieces, b"")
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _info(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(target: Path, store: BlobStore, index: bytes, digests: Sequence[str]) -> None:
    """Write the archive to ``target`` (a new file) and flush it to disk."""
    with target.open("xb") as raw:
        with tarfile.TarFile(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                             copybufsize=CHUNK) as tar:
            tar.addfile(_info("oci-layout", len(OCI_LAYOUT)), io.BytesIO(OCI_LAYOUT))
            tar.addfile(_info("index.json", len(index)), io.BytesIO(index))
            tar.addfile(_info("blobs/", directory=True))
            done_dirs: set[str] = set()
            for digest in sorted(digests):
                name = blob_name(digest)
                folder = name.rsplit("/", 1)[0] + "/"
                if folder not in done_dirs:
                    tar.addfile(_info(folder, directory=True))
                    done_dirs.add(folder)
                size = store.size(digest)
                if size is None:
                    continue
                reader: BinaryIO = io.BufferedReader(_Checked(store, digest), CHUNK)
                tar.addfile(_info(name, size), reader)
        raw.flush()
        os.fsync(raw.fileno())
