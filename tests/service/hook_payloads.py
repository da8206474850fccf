"""Webhook deliveries as each registry sends them, after their documentation's own examples:
distribution's notifications.md, Harbor's "Configure Webhook Notifications", GitHub's
``package`` event (octokit/webhooks payload examples), Docker Hub's and Quay's webhook docs.
Fields fanout does not read are kept, so a parser is tested on the whole shape, not a sketch."""

from __future__ import annotations

from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

INDEX = "sha256:" + "1" * 64
AMD64 = "sha256:" + "a" * 64
ARM64 = "sha256:" + "b" * 64
BLOB = "sha256:" + "c" * 64


def distribution_event(action: str, media_type: str, digest: str, *, repository: str = "acme/app",
                       tag: str | None = None, host: str = "registry.corp:5000") -> dict[str, Any]:
    """One event of distribution's envelope, as docker-registry 2.8 writes it."""
    kind = "manifests" if "manifest" in media_type or "index" in media_type else "blobs"
    target: dict[str, Any] = {
        "mediaType": media_type, "size": 708, "digest": digest, "length": 708,
        "repository": repository,
        "url": f"http://{host}/v2/{repository}/{kind}/{digest}",
    }
    if tag is not None:
        target["tag"] = tag
    return {
        "id": "320678d8-ca14-430f-8bb6-4ca139cd83f7",
        "timestamp": "2016-03-09T14:44:26.402973972-08:00",
        "action": action,
        "target": target,
        "request": {"id": "6df24a34-0959-4923-81ca-14f09767db19", "addr": "10.0.0.7:42961",
                    "host": host, "method": "PUT" if action == "push" else "GET",
                    "useragent": "buildkit/v0.12"},
        "actor": {"name": "ci"},
        "source": {"addr": "registry-0:5000", "instanceID": "a53db899-3b4b-4a62-a067-8dd013beaca4"},
    }


def distribution_multiplatform(tag: str = "v1.2.0", host: str = "registry.corp:5000",
                               repository: str = "acme/app") -> dict[str, Any]:
    """A buildx push of two platforms: blobs, each platform by digest, the index by digest and
    then by tag, and a pull, in one envelope."""
    def event(action: str, media_type: str, digest: str, t: str | None = None) -> dict[str, Any]:
        return distribution_event(action, media_type, digest, tag=t, host=host,
                                  repository=repository)

    return {"events": [
        event("push", LAYER, BLOB),
        event("push", OCI_MANIFEST, AMD64),
        event("push", OCI_MANIFEST, ARM64),
        event("push", OCI_INDEX, INDEX),
        event("push", OCI_INDEX, INDEX, tag),
        event("pull", OCI_INDEX, INDEX, tag),
    ]}


def harbor_push(tag: str | None = "v1.2.0", digest: str = INDEX,
                host: str = "harbor.corp") -> dict[str, Any]:
    """Harbor's PUSH_ARTIFACT, default format."""
    reference = f":{tag}" if tag else f"@{digest}"
    resource: dict[str, Any] = {"digest": digest, "resource_url": f"{host}/library/app{reference}"}
    if tag:
        resource["tag"] = tag
    return {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1737446601,
        "operator": "robot$ci",
        "event_data": {
            "resources": [resource],
            "repository": {"date_created": 1737446600, "name": "app", "namespace": "library",
                           "repo_full_name": "library/app", "repo_type": "private"},
        },
    }


def harbor_cloudevent(tag: str = "v1.2.0", digest: str = INDEX) -> dict[str, Any]:
    """The same push in Harbor's CloudEvents format."""
    default = harbor_push(tag, digest)
    return {
        "specversion": "1.0", "id": "4b6d2a5f-8c4e-4d3a-9d1b-2f1c4b5e6a7d",
        "source": "/projects/2/webhook/policies/5", "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json", "time": "2025-01-21T08:03:21Z",
        "operator": "robot$ci", "data": default["event_data"],
    }


_GITHUB_OWNER = {"login": "Acme-Corp", "id": 21031067, "node_id": "MDQ6VXNlcjIxMDMxMDY3",
                 "type": "Organization", "site_admin": False,
                 "url": "https://api.github.com/users/Acme-Corp"}


def github_package(tag: str = "v1.2.0", digest: str = INDEX, *, key: str = "package",
                   action: str = "published", package_type: str = "CONTAINER",
                   ) -> dict[str, Any]:
    """GitHub's ``package`` event for a container pushed to ghcr.io (``key="registry_package"``
    for the older event of the same shape)."""
    return {
        "action": action,
        key: {
            "id": 10696, "name": "App", "namespace": "Acme-Corp", "description": None,
            "ecosystem": "CONTAINER", "package_type": package_type,
            "html_url": "https://github.com/orgs/Acme-Corp/packages/container/package/app",
            "created_at": "2025-05-09T23:28:29Z", "updated_at": "2025-05-09T23:28:29Z",
            "owner": _GITHUB_OWNER,
            "package_version": {
                "id": 57755790, "version": digest, "name": digest,
                "description": "", "summary": "", "body": "", "manifest": "",
                "html_url": "https://github.com/orgs/Acme-Corp/packages/container/app/57755790",
                "target_commitish": "main", "target_oid": "6c62fb45fe66bfb1ea9a66abc38f6a0c",
                "created_at": "2025-05-09T23:28:29Z", "updated_at": "2025-05-09T23:28:29Z",
                "metadata": [],
                "container_metadata": {
                    "tag": {"name": tag, "digest": digest},
                    "labels": {"description": "", "source": "https://github.com/Acme-Corp/app",
                               "revision": "", "image_url": "", "licenses": "",
                               "all_labels": {}},
                    "manifest": {"digest": digest, "media_type": OCI_INDEX,
                                 "uri": f"repositories/acme-corp/app/manifests/{digest}",
                                 "size": 1609, "config": {}, "layers": []},
                },
                "package_files": [],
                "installation_command": f"docker pull ghcr.io/acme-corp/app:{tag}",
                "package_url": f"ghcr.io/acme-corp/app:{tag}",
            },
            "registry": {"about_url": "https://docs.github.com/packages",
                         "name": "GitHub CONTAINER registry", "type": "CONTAINER",
                         "url": "https://CONTAINER.pkg.github.com/Acme-Corp",
                         "vendor": "GitHub Inc"},
        },
        "repository": {"id": 185882436, "name": "app", "full_name": "Acme-Corp/app",
                       "private": True, "owner": _GITHUB_OWNER},
        "organization": {"login": "Acme-Corp", "id": 38302899},
        "sender": _GITHUB_OWNER,
    }


def github_ping() -> dict[str, Any]:
    return {"zen": "Keep it logically awesome.", "hook_id": 12345678,
            "hook": {"type": "Organization", "id": 12345678, "events": ["package"],
                     "active": True, "config": {"content_type": "json", "insecure_ssl": "0",
                                                "url": "https://fanout.corp/v1/hooks/github"}}}


def dockerhub_push(tag: str = "v1.2.0", repo_name: str = "acme/app") -> dict[str, Any]:
    namespace, _, name = repo_name.rpartition("/")
    return {
        "callback_url": "https://registry.hub.docker.com/u/acme/app/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
        "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": tag},
        "repository": {
            "comment_count": 0, "date_created": 1417494799, "description": "",
            "dockerfile": "FROM scratch\n", "full_description": "", "is_official": False,
            "is_private": True, "is_trusted": True, "name": name, "namespace": namespace,
            "owner": namespace, "repo_name": repo_name,
            "repo_url": f"https://registry.hub.docker.com/u/{repo_name}/", "star_count": 0,
            "status": "Active",
        },
    }


def quay_push(tags: Any = ("v1.2.0",), host: str = "quay.io") -> dict[str, Any]:
    return {
        "name": "app", "repository": "acme/app", "namespace": "acme",
        "docker_url": f"{host}/acme/app", "homepage": f"https://{host}/repository/acme/app",
        "updated_tags": list(tags) if not isinstance(tags, dict) else tags,
    }
