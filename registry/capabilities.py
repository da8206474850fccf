"""What a registry host has shown it accepts, learnt from its answers rather than its name.

Hosted registries depart from the distribution spec in documented ways (ECR takes no chunk under
5 MiB, GHCR none over 4 MiB, Artifact Registry no chunks at all, Artifactory and ECR honour no
mounts, half of them have no referrers API). fanout does not keep a table of host names: each
:class:`Capabilities` starts out knowing nothing and records what the host's answers teach, so
the next request, the next task and the next release on that worker get it right first time.

One :class:`CapabilityStore` lives as long as its owner: a ``fanout copy`` run, or a worker
process across all its tasks. Learning only ever narrows (a minimum grows, a maximum shrinks, a
"no" is kept), so uploads racing each other that learn the same rule agree, and none undoes
what another learnt.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

# Chunks never go below this, whatever a registry's 416 suggests: below it a blob costs a
# request per few hundred KiB and a confused registry could make us crawl.
MIN_CHUNK_FLOOR = 256 * 1024


@dataclass(slots=True)
class Capabilities:
    """What one host accepts; None means not learnt yet."""

    # A blob in one PUT (POST then PUT with the body). False: chunks only.
    whole_blob: bool | None = None
    # Chunked (PATCH) uploads. False: whole blobs only (Artifact Registry refuses PATCH).
    chunked: bool | None = None
    # Chunk bounds, from OCI-Chunk-Min-Length, a 416 with Range, or a refused chunk.
    chunk_min: int = 0
    chunk_max: int | None = None
    # An upload cut part-way can be continued: its status (GET on the upload URL) says where it
    # stands. False: the status was refused, or the upload was gone after a cut (distribution
    # 2.8 drops one cut mid-body: BLOB_UPLOAD_INVALID), so big blobs go whole as before.
    resumes: bool | None = None
    # Cross-repository mounts honoured (201) rather than answered with a fresh upload. A
    # declined mount costs nothing (its upload is used), so a False does not stop asking.
    mounts: bool | None = None
    # Mount requests refused outright (401/403/400: Docker Hub's token server can grant only
    # the first of several scopes): asking again only costs requests, so we stop.
    mounts_refused: bool = False
    # GET /v2/<name>/referrers/<digest> answers with a real OCI index.
    referrers_api: bool | None = None
    # DELETE of manifests at all. False: the registry answers 405 UNSUPPORTED to every
    # DELETE (distribution's ``storage.delete.enabled: false``), whatever the repository.
    deletes: bool | None = None
    # DELETE /v2/<name>/manifests/<tag> (OCI 1.1). False: refused (distribution 2.8 answers
    # 400 DIGEST_INVALID), so an untag goes by digest without asking again.
    delete_by_tag: bool | None = None

    def learn_chunk_min(self, size: int) -> None:
        self.chunk_min = max(self.chunk_min, size)

    def learn_chunk_max(self, size: int) -> None:
        size = max(size, MIN_CHUNK_FLOOR)
        self.chunk_max = size if self.chunk_max is None else min(self.chunk_max, size)

    def chunk_size(self, wanted: int) -> int:
        """The chunk size to use when ``wanted`` is what we would like."""
        size = max(wanted, self.chunk_min)
        if self.chunk_max is not None and self.chunk_max >= self.chunk_min:
            size = min(size, self.chunk_max)
        return size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CapabilityStore:
    """Capabilities per registry host, shared by every client that talks to it."""

    def __init__(self) -> None:
        self._hosts: dict[str, Capabilities] = {}
        # A worker may run copies on several threads' event loops; the map itself is guarded,
        # the small updates to one Capabilities are single assignments.
        self._lock = threading.Lock()

    def get(self, registry: str) -> Capabilities:
        """The (possibly empty) capabilities of ``registry``, created on first ask."""
        with self._lock:
            found = self._hosts.get(registry)
            if found is None:
                found = self._hosts[registry] = Capabilities()
            return found

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {host: caps.to_dict() for host, caps in self._hosts.items()}
