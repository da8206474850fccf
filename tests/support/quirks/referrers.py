"""The referrers API (OCI distribution-spec 1.1), emulated by the proxy; and what registries
without it answer on its URL.

distribution 2.8 behind the proxy has no referrers API. ``ReferrersAPI`` keeps, per repository,
every manifest PUT through the proxy whose body has a ``subject``, and answers
``GET /v2/<name>/referrers/<digest>`` with an OCI image index of their descriptors (spec,
"Listing Referrers": ``artifactType`` from the manifest, else its config's media type;
annotations copied; ``artifactType`` filter honoured with ``OCI-Filters-Applied``), and says it
on the manifest PUT with ``OCI-Subject`` ("Pushing Manifests with Subject").
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any
from urllib.parse import quote

from .exchange import Behaviour, Exchange, Upstream
from .replies import Reply, json_reply

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class ReferrersAPI(Behaviour):
    """An emulated referrers API; ``content_type`` is what its answers are labelled.

    ECR supports OCI 1.1 referrers (AWS ECR user guide, "Private images in Amazon ECR": "With
    Amazon ECR support for OCI v1.1, you can store and manage reference artifacts that are defined
    by the OCI Referrers API"); so does ACR. Harbor's answers came labelled ``application/json``
    (goharbor/harbor#19690 "Incorrect content-type returned from /referrers").
    """

    name = "referrers-api"

    def __init__(self, content_type: str = OCI_INDEX) -> None:
        self.content_type = content_type
        self._lock = threading.Lock()
        # (repository, subject digest) -> {referrer digest: descriptor}
        self._store: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def referrers(self, repository: str, subject: str) -> list[dict[str, Any]]:
        """What the API lists for ``subject`` in ``repository``."""
        with self._lock:
            return list(self._store.get((repository, subject), {}).values())

    def wants_body(self, ex: Exchange) -> bool:
        return ex.method == "PUT" and ex.kind == "manifests"

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.kind != "referrers" or ex.method not in ("GET", "HEAD") or ex.repo is None:
            return None
        wanted = ex.param("artifactType")
        entries = self.referrers(ex.repo, ex.ref or "")
        headers = {}
        if wanted:
            entries = [e for e in entries if e.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return json_reply(200, doc, self.content_type, headers)

    def on_response(self, ex: Exchange, up: Upstream) -> Reply | None:
        if not self.wants_body(ex) or up.status != 201 or ex.body is None or ex.repo is None:
            return None
        try:
            doc = json.loads(ex.body)
        except ValueError:
            return None
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
            return None
        descriptor: dict[str, Any] = {
            "mediaType": doc.get("mediaType") or (ex.header("content-type") or "").split(";")[0],
            "digest": "sha256:" + hashlib.sha256(ex.body).hexdigest(),
            "size": len(ex.body),
        }
        config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        artifact_type = doc.get("artifactType") or config.get("mediaType")
        if artifact_type:
            descriptor["artifactType"] = artifact_type
        if doc.get("annotations"):
            descriptor["annotations"] = doc["annotations"]
        with self._lock:
            self._store.setdefault((ex.repo, subject["digest"]), {})[descriptor["digest"]] = \
                descriptor
        up.set_header("OCI-Subject", subject["digest"])
        return None


class ReferrersSignInPage(Behaviour):
    """The referrers URL redirects to a sign-in page that answers 200 ``text/html`` (Artifact
    Registry).

    google/go-containerregistry#1968: "GAR today (OCI 1.0) redirect 'referrers' API call to the
    google console authentication page, and doing so the call return 200 OK + content-type:
    text/html"; oras-project/oras-go#633 shows the redirect to ``accounts.google.com/v3/signin``.
    Here the page is served by the proxy itself, at ``/v3/signin/identifier``.
    """

    name = "referrers-html"
    page = "/v3/signin/identifier"

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.path == self.page:
            body = (b"<!DOCTYPE html><html lang=\"en\"><head><title>Sign in - Google Accounts"
                    b"</title></head><body><form action=\"/v3/signin/identifier\" method=\"post\">"
                    b"<input type=\"email\" name=\"identifier\"></form></body></html>")
            return Reply(200, {"Content-Type": "text/html; charset=utf-8"}, body)
        if ex.kind == "referrers":
            back = quote(f"{ex.proxy.url}{ex.path}", safe="")
            return Reply(307, {"Location": f"{ex.proxy.url}{self.page}?continue={back}"})
        return None


class NoReferrersAPI(Behaviour):
    """No referrers API: the URL is answered 404, as by the registries that lack it (GHCR,
    Docker Hub, GitLab; docker/roadmap#724 "Support Referrers API in OCI 1.1" is open)."""

    name = "no-referrers-api"

    def on_request(self, ex: Exchange) -> Reply | None:
        if ex.kind == "referrers":
            return Reply(404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found")
        return None
