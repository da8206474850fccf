"""Blobs to push: random layers (real tars, gzip'd or plain) and small blobs held as bytes.

Every layer holds one file of new random bytes, so every image built from them is new. Layers
over 16 MiB are streamed through a temporary file; memory stays small even for a 1 GiB layer.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support.oci import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR, sha256

DEFAULT_LAYER_SIZE = 64 * 1024
# Layers up to this size are kept in memory; bigger ones live in a temporary file.
_IN_MEMORY_MAX = 16 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass
class Layer:
    """A built layer blob; reusable across images and repositories while the object lives."""

    digest: str
    diff_id: str  # sha256 of the uncompressed tar
    size: int
    media_type: str
    _data: bytes | None = field(default=None, repr=False)
    _path: Path | None = field(default=None, repr=False)

    def open(self) -> IO[bytes]:
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        return self._path.open("rb")

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Blob:
    """A small blob (a config, a payload) held as bytes."""

    digest: str
    size: int
    media_type: str
    open: Callable[[], IO[bytes]]

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def bytes_blob(data: bytes, media_type: str) -> Blob:
    return Blob(sha256(data), len(data), media_type, lambda: io.BytesIO(data))


def make_layer(
    size: int = DEFAULT_LAYER_SIZE, *, compress: bool = True, docker: bool = False,
    directory: Path | None = None,
) -> Layer:
    """A tar with one file of `size` random bytes; gzip level 1 unless `compress=False`.

    A layer over 16 MiB is a temporary file in `directory` (a test's `tmp_path`, say), else in
    the system's temporary directory."""
    if docker and not compress:
        raise ValueError("Docker schema 2 layers here are always gzip'd")
    media_type = (DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP) if compress else OCI_LAYER_TAR
    big = size > _IN_MEMORY_MAX
    if big:
        fd, name = tempfile.mkstemp(
            prefix="fanout-layer-", suffix=".tar.gz" if compress else ".tar", dir=directory
        )
        out: IO[bytes] = os.fdopen(fd, "wb")
    else:
        out = io.BytesIO()
    blob_hash = _HashingWriter(out)
    tar_hash: _HashingWriter
    gz: gzip.GzipFile | None = None
    if compress:
        gz = gzip.GzipFile(fileobj=blob_hash, mode="wb", compresslevel=1, mtime=0)
        tar_hash = _HashingWriter(gz)  # type: ignore[arg-type]
    else:
        tar_hash = blob_hash
    with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        info = tarfile.TarInfo(f"fanout/random-{os.urandom(8).hex()}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, _RandomReader(size))
    if gz is not None:
        gz.close()
    layer = Layer(
        digest=blob_hash.digest(),
        diff_id=tar_hash.digest(),
        size=blob_hash.count,
        media_type=media_type,
    )
    if big:
        out.close()
        layer._path = Path(name)
        # The file goes when the Layer does, so a test cannot leak a 1 GiB temp file.
        weakref.finalize(layer, _unlink_quietly, name)
    else:
        assert isinstance(out, io.BytesIO)
        layer._data = out.getvalue()
    return layer


class _RandomReader:
    def __init__(self, size: int) -> None:
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = min(self._left, _CHUNK) if n < 0 else min(n, self._left)
        self._left -= n
        return os.urandom(n)


class _HashingWriter:
    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.count += len(data)
        self._target.write(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
