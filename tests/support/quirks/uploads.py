"""Blob upload rules of hosted registries: mounts, chunk sizes, Content-Range, whole-blob PUTs.

Offsets are the proxy's own count of what the registry accepted (``proxy.upload_offset``): the
registry behind (distribution 2.8) checks none of these rules itself.
"""

from __future__ import annotations

import re
import threading

from .exchange import Behaviour, Exchange, Upstream
from .replies import Reply, error_reply

MiB = 1024 * 1024
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def _is_patch(ex: Exchange) -> bool:
    return ex.method == "PATCH" and ex.upload_id is not None


def _range_headers(ex: Exchange) -> dict[str, str]:
    """Where the upload stands, as a registry says it: ``Range: 0-<last byte>``, Location."""
    offset = ex.proxy.upload_offset(ex.upload_id or "")
    target = f"{ex.path}?{ex.query}" if ex.query else ex.path
    return {"Location": f"{ex.proxy.url}{target}", "Range": f"0-{max(offset - 1, 0)}",
            "Docker-Upload-UUID": ex.upload_id or ""}


class PatchAnswers(Behaviour):
    """A PATCH the registry accepted is answered ``status`` (ECR: 201, not the spec's 202).

    regclient scheme/reg/blob.go, blobPutUploadChunked: "distribution-spec is 202, AWS ECR
    returns a 201"; cirruslabs' tart saw the same ("Unexpected 201 when uploading to ECR with
    --chunk-size", tart issue #273).
    """

    name = "patch-201"

    def __init__(self, status: int = 201) -> None:
        self.status = status

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        if _is_patch(ex) and up.status == 202:
            up.status, up.changed_by = self.status, self.name
        return None


class ChunkMinimum(Behaviour):
    """Chunks other than the last must be at least ``minimum`` bytes (ECR: 5 MiB).

    botocore ECR LayerPartTooSmallException: "Layer parts must be at least 5 MiB in size". A
    chunk is known to be non-final when another chunk follows it, so the chunk after a small one
    is refused with 400 and an error body.
    """

    name = "chunk-minimum"

    def __init__(self, minimum: int = 5 * MiB) -> None:
        self.minimum = minimum
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def on_request(self, ex: Exchange) -> Reply | None:
        if not ((_is_patch(ex) or (ex.method == "PUT" and ex.has_body)) and ex.upload_id):
            return None
        with self._lock:
            previous = self._last.get(ex.upload_id)
        if previous is not None and previous < self.minimum:
            return error_reply(400, "BLOB_UPLOAD_INVALID",
                               "Layer parts must be at least 5 MiB in size",
                               detail={"partSize": previous, "minimum": self.minimum})
        return None

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        if _is_patch(ex) and up.status == 202 and ex.upload_id:
            with self._lock:
                self._last[ex.upload_id] = ex.forwarded
        return None


class ChunkMaximum(Behaviour):
    """A PATCH over ``maximum`` bytes is answered 416 with ``Range: 0-<last byte so far>`` (GHCR:
    4 MiB per request).

    ocx-sh/ocx pull request #237, pushing to GHCR: "416 REQUESTED_RANGE_NOT_SATISFIABLE: the
    request body is too large and exceeds the maximum permissible limit of 4.00MiB".
    """

    name = "chunk-maximum"

    def __init__(self, maximum: int = 4 * MiB) -> None:
        self.maximum = maximum

    def on_request(self, ex: Exchange) -> Reply | None:
        if _is_patch(ex) and ex.length is not None and ex.length > self.maximum:
            return error_reply(
                416, "RANGE_INVALID",
                "the request body is too large and exceeds the maximum permissible limit of "
                f"{self.maximum / MiB:.2f}MiB", headers=_range_headers(ex))
        return None


class NoChunkedUploads(Behaviour):
    """Every PATCH is refused: whole-blob uploads only (Artifact Registry).

    cloud.google.com/artifact-registry/docs/reference/docker-api, as quoted in
    dotnet/sdk-container-builds#287: "Artifact Registry does not support Docker chunked uploads
    ... You must use monolithic uploads"; skopeo issue #1101 ("skopeo copy fails on GAR due to no
    chunked-upload support"). The status is not documented: 405 with UNSUPPORTED is our choice.
    """

    name = "no-chunks"

    def on_request(self, ex: Exchange) -> Reply | None:
        if _is_patch(ex):
            return error_reply(405, "UNSUPPORTED", "chunked uploads are not supported; "
                               "upload the blob in one PUT")
        return None


class WholeBlobRefused(Behaviour):
    """Whole-blob uploads refused: a PUT with a body, or a POST with ``digest=``; the client must
    PATCH the bytes and finish with an empty PUT.

    JFrog Artifactory was reported to require PATCH (containerd/containerd#3533, citing
    moby/buildkit#1130 and RTFACT-19344).
    """

    name = "chunks-only"

    def on_request(self, ex: Exchange) -> Reply | None:
        monolithic_put = ex.method == "PUT" and ex.upload_id is not None and ex.has_body
        monolithic_post = ex.method == "POST" and ex.kind == "uploads" and ex.param("digest")
        if monolithic_put or monolithic_post:
            return error_reply(400, "UNSUPPORTED", "monolithic upload is not supported; upload "
                               "the blob in chunks (PATCH) and finish with an empty PUT")
        return None


class MountDeclined(Behaviour):
    """A cross-repository mount is never honoured: the POST opens a fresh upload (202), as the
    spec allows ("the registry MAY ... fall back to starting an upload").

    ECR and Artifactory answer mounts so: the push then uploads the bytes again.
    """

    name = "mount-declined"

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method == "POST" and ex.kind == "uploads" and ex.param("mount"):
            ex.set_params([(k, v) for k, v in ex.params if k not in ("mount", "from", "origin")])
            ex.record.quirk = self.name
        return None


class MountNeedsFrom(Behaviour):
    """A mount without ``from`` is refused (Quay).

    go-containerregistry pkg/v1/remote/write.go, initiateUpload: "Quay will fail if we specify a
    'mount' without a 'from'".
    """

    name = "mount-needs-from"

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method == "POST" and ex.kind == "uploads" and ex.param("mount") and not ex.param(
                "from"):
            return error_reply(400, "INVALID_REQUEST", "Invalid request")
        return None


class QuayContentRange(Behaviour):
    """``Content-Range`` must be ``start-end`` and start at the upload's offset.

    quay/quay endpoints/v2/blob.py: RANGE_HEADER_REGEX ``^([0-9]+)-([0-9]+)$``; a header that
    does not parse is "Invalid range header" (400); a start that is not the upload's byte count
    is BlobRangeMismatchException, answered 416 with ``Range``, ``Location`` and
    ``Docker-Upload-UUID`` (``_abort_range_not_satisfiable``). No header means "from 0".
    """

    name = "quay-content-range"

    def on_request(self, ex: Exchange) -> Reply | None:
        if not _is_patch(ex):
            return None
        value = ex.header("content-range")
        start = 0
        if value is not None:
            match = _RANGE.match(value.strip())
            if match is None:
                return error_reply(400, "INVALID_REQUEST", "Invalid range header")
            start = int(match[1])
        if start != ex.proxy.upload_offset(ex.upload_id or ""):
            return Reply(416, _range_headers(ex))
        return None


class AcrContentRange(Behaviour):
    """``Content-Range: bytes ...`` refused; only ``start-end`` accepted (ACR).

    dotnet/sdk-container-builds#258: "ACR throws an error with the .NET type
    {"Range":"bytes 0-84521/*","Reason":"the Content-Range header format is invalid"}".
    """

    name = "acr-content-range"

    def on_request(self, ex: Exchange) -> Reply | None:
        value = ex.header("content-range")
        if _is_patch(ex) and value is not None and _RANGE.match(value.strip()) is None:
            return error_reply(400, "BLOB_UPLOAD_INVALID", "blob upload invalid", detail={
                "Range": value, "Reason": "the Content-Range header format is invalid"})
        return None


class Distribution3ContentRange(Behaviour):
    """distribution v3 checks a PATCH's ``Content-Range`` against the upload and its length.

    distribution/distribution registry/handlers/blobupload.go, PatchBlobData (v3): with both
    ``Content-Range`` and ``Content-Length``, ``start > end || start != Upload.Size()`` is
    RANGE_INVALID (416) and ``Content-Length != end-start+1`` is SIZE_INVALID (400).
    """

    name = "dist3-content-range"

    def on_request(self, ex: Exchange) -> Reply | None:
        value = ex.header("content-range")
        if not _is_patch(ex) or value is None or ex.length is None:
            return None
        match = re.search(r"(\d+)-(\d+)", value)
        if match is None:
            return error_reply(400, "RANGE_INVALID", "invalid content range")
        start, end = int(match[1]), int(match[2])
        if start > end or start != ex.proxy.upload_offset(ex.upload_id or ""):
            return error_reply(416, "RANGE_INVALID", "invalid content range")
        if ex.length != end - start + 1:
            return error_reply(400, "SIZE_INVALID", "provided length did not match content length")
        return None


class Throttle(Behaviour):
    """Upload bodies (PUT and PATCH to an upload) reach the registry at ``bytes_per_second``: a
    slow link, so a token can expire while one blob is still on its way."""

    name = "throttle"

    def __init__(self, bytes_per_second: float) -> None:
        self.bytes_per_second = bytes_per_second

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.method in ("PUT", "PATCH") and ex.upload_id is not None:
            ex.throttle = self.bytes_per_second
        return None
