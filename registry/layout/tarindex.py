"""An OCI archive read in place: its tar members indexed once (name → offset and size), and
each read by seeking, so an archive is never extracted whole."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotALayout


@dataclass(frozen=True, slots=True)
class Member:
    """A regular file in the archive: where its bytes start, how many it declares, and how
    many the file really holds (fewer when the archive was cut short)."""

    offset: int
    size: int
    present: int


class TarIndex:
    """The regular files of a tar, by normalised name (``./`` dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, Member] = {}
        self.truncated = False
        try:
            total = path.stat().st_size
            with tarfile.open(path, mode="r:") as tar:
                try:
                    for info in tar:
                        if info.isreg():
                            present = max(0, min(info.size, total - info.offset_data))
                            self.members[_normal(info.name)] = Member(
                                info.offset_data, info.size, present)
                except tarfile.ReadError:
                    # Cut short after some members: keep them; reading one past the cut
                    # fails naming its digest.
                    self.truncated = True
        except (tarfile.ReadError, tarfile.CompressionError) as exc:
            raise NotALayout(f"{path} is not a tar archive ({exc})") from None
        except OSError as exc:
            raise NotALayout(f"cannot read {path}: {exc.strerror or exc}") from None
        if any(m.present < m.size for m in self.members.values()):
            self.truncated = True

    def read(self, name: str, limit: int) -> bytes | None:
        """A small member's bytes (at most ``limit``), or None when there is no such member."""
        member = self.members.get(name)
        if member is None:
            return None
        with self.path.open("rb") as handle:
            handle.seek(member.offset)
            return handle.read(min(member.size, limit))

    def open_at(self, name: str) -> tuple[int, Member] | None:
        """A descriptor opened at ``name``'s first byte, and the member; None if absent."""
        member = self.members.get(name)
        if member is None:
            return None
        fd = os.open(self.path, os.O_RDONLY)
        os.lseek(fd, member.offset, os.SEEK_SET)
        return fd, member


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")
