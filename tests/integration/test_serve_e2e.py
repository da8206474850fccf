"""`fanout serve` for real: a uvicorn process, a Redis, a `celery worker` and registries.

A release enqueued over HTTP lands on every destination of its set and is followed to the end
over server-sent events; a failed one is retried over HTTP; every refusal leaves the ledger and
the broker untouched; slow clients are cut off; no token reaches a log.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support.cli import write_docker_config
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    messages_in_broker,
    queue_env,
    start_worker,
)
from tests.support.registries import RegistrySet
from tests.support.registry_client import RepoClient
from tests.support.serve import Served, serving, token_toml
from workers.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CI_TOKEN = "ci-e2e-token-5d1c0a9b"
READER_TOKEN = "reader-e2e-token-77aa"
REPO = "serve/app"


@dataclass
class Front:
    served: Served
    env: dict[str, str]
    docker: Path
    registries: RegistrySet
    worker: Process

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.env["FANOUT_BROKER_URL"])

    def post(self, path: str, body: object, token: str = CI_TOKEN) -> Any:
        with self.served.client(token) as client:
            return client.post(path, json=body)

    def events(self, release_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Every event of the release's stream, read until the server ends it."""
        with self.served.client(READER_TOKEN) as client, client.stream(
                "GET", f"/v1/releases/{release_id}/events", timeout=60) as stream:
            assert stream.status_code == 200
            text = "".join(stream.iter_text())
        found = []
        for block in text.strip().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines()
                         if not line.startswith(":"))
            if lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found


@pytest.fixture(scope="module")
def front(registries: RegistrySet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp("serve")
    server = RedisServer(tmp / "redis", persistent=False).start()
    docker = write_docker_config(tmp / "docker", [registries.basic],
                                 wrong_password=[registries.basic.host])
    env = queue_env(f"{server.url}/0", docker, FANOUT_SERVE_REQUEST_TIMEOUT="1")
    regs = registries
    config = (
        "[destinations]\n"
        f'release = ["{regs.dest1.host}/{REPO}", "{regs.dest2.host}/{REPO}:stable"]\n'
        f'guarded = ["{regs.basic.host}/{REPO}"]\n'
        f'other = ["{regs.dest2.host}/elsewhere"]\n'
        + token_toml("ci", CI_TOKEN, ["release", "guarded"], [f"{regs.source.host}/serve/*"])
        + token_toml("reader", READER_TOKEN, [], []))
    try:
        worker = start_worker("front1", env, tmp, loglevel="DEBUG")
        try:
            with serving(tmp / "serve", config, env=env) as served:
                yield Front(served, env, docker, registries, worker)
        finally:
            worker.stop()
    finally:
        server.stop()


def _no_tokens_in(*texts: str) -> None:
    for text in texts:
        assert CI_TOKEN not in text and READER_TOKEN not in text


def test_a_release_posted_over_http_lands_everywhere_and_is_followed_to_the_end(
        front: Front) -> None:
    regs = front.registries
    image = images.push_oci_image(regs.source, REPO, "v1", layers=2)

    answer = front.post("/v1/releases", {"source": f"{regs.source.host}/{REPO}:v1",
                                         "to": "release", "tags": ["1.0.0"]})

    assert answer.status_code == 201, answer.text
    document = answer.json()
    assert answer.headers["location"] == f"/v1/releases/{document['id']}"
    assert document["digest"] == image.digest  # pinned by the server, once
    assert set(document["destinations"]) == {f"{regs.dest1.host}/{REPO}",
                                             f"{regs.dest2.host}/{REPO}"}
    events = front.events(document["id"])
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and kinds[:-1] == ["release"] * (len(kinds) - 1)
    assert events[-1][1] == {"id": document["id"], "ok": True}
    final = events[-2][1]
    assert final["done"] and final["exit_code"] == 0
    for host, tag in ((regs.dest1, "1.0.0"), (regs.dest2, "stable")):
        assert images.manifest_exists(host, f"{REPO}@{image.digest}")
        assert images.manifest_exists(host, f"{REPO}:{tag}")
    with front.served.client(READER_TOKEN) as client:
        listed = client.get("/v1/releases", params={"limit": 5}).json()["releases"]
    assert listed[0]["id"] == document["id"] and listed[0]["ok"]
    _no_tokens_in(front.served.log(), front.worker.log())


def test_a_failed_release_is_retried_over_http(front: Front) -> None:
    regs = front.registries
    image = images.push_oci_image(regs.source, REPO, "v2", layers=1)
    write_docker_config(front.docker, [regs.basic], wrong_password=[regs.basic.host])
    created = front.post("/v1/releases", {"source": f"{regs.source.host}/{REPO}:v2",
                                          "to": "guarded"}).json()
    final = [data for kind, data in front.events(created["id"]) if kind == "release"][-1]
    assert final["exit_code"] == 1
    record = final["destinations"][f"{regs.basic.host}/{REPO}"]
    assert record["error_type"] == "Unauthorized"

    write_docker_config(front.docker, [regs.basic])  # the operator fixes the password
    stranger = front.post(f"/v1/releases/{created['id']}/retry", {}, token=READER_TOKEN)
    retried = front.post(f"/v1/releases/{created['id']}/retry", {})

    assert stranger.status_code == 403
    assert retried.status_code == 200, retried.text
    assert retried.json()["sent"] == [f"{regs.basic.host}/{REPO}"]
    events = front.events(created["id"])
    assert events[-1] == ("end", {"id": created["id"], "ok": True})
    history = events[-2][1]["destinations"][f"{regs.basic.host}/{REPO}"]["history"]
    assert [h["outcome"] for h in history] == ["failed", "succeeded"]
    assert images.manifest_exists(regs.basic, f"{REPO}@{image.digest}")


def test_a_release_is_verified_and_repaired_over_http(front: Front) -> None:
    regs = front.registries
    image = images.push_oci_image(regs.source, REPO, "v3", layers=1)
    created = front.post("/v1/releases", {"source": f"{regs.source.host}/{REPO}:v3",
                                          "to": "release", "tags": ["9.9.9"]}).json()
    assert front.events(created["id"])[-1] == ("end", {"id": created["id"], "ok": True})
    moved = images.push_oci_image(regs.dest1, REPO, "9.9.9", layers=1)  # by hand
    target = f"{regs.dest1.host}/{REPO}"

    found = front.post(f"/v1/releases/{created['id']}/verify", {}, token=READER_TOKEN)
    stranger = front.post(f"/v1/releases/{created['id']}/verify", {"repair": True},
                          token=READER_TOKEN)
    repaired = front.post(f"/v1/releases/{created['id']}/verify", {"repair": True})

    assert found.status_code == 200, found.text
    verdicts = {d["destination"]: d for d in found.json()["destinations"]}
    assert verdicts[target]["state"] == "tag moved" and found.json()["exit_code"] == 1
    assert verdicts[target]["tags"]["9.9.9"]["found"] == moved.digest
    assert stranger.status_code == 403
    assert repaired.status_code == 200, repaired.text
    assert repaired.json()["repaired"] == {created["id"]: [target]}
    assert front.events(created["id"])[-1] == ("end", {"id": created["id"], "ok": True})
    with RepoClient.at(regs.dest1, REPO) as client:
        assert client.manifest_head("9.9.9").headers["Docker-Content-Digest"] == image.digest
    again = front.post(f"/v1/releases/{created['id']}/verify", {}, token=READER_TOKEN).json()
    assert again["exit_code"] == 0, again
    _no_tokens_in(front.served.log(), front.worker.log())


@pytest.mark.parametrize(("token", "body", "status", "names"), [
    (None, {"source": "SRC", "to": "release"}, 401, "token is required"),
    ("wrong-token", {"source": "SRC", "to": "release"}, 401, "not valid"),
    (READER_TOKEN, {"source": "SRC", "to": "release"}, 403, "may not copy from"),
    (CI_TOKEN, {"source": "SRC", "to": "other"}, 403, "may not enqueue to set 'other'"),
    (CI_TOKEN, {"source": "SRC", "to": "nope"}, 422, "no destination set 'nope'"),
    (CI_TOKEN, {"source": "SRC:Bad Tag", "to": "release"}, 422, "source"),
    (CI_TOKEN, {"source": "SRC:never-pushed", "to": "release"}, 422, "no such image"),
    (CI_TOKEN, b"{\"source\": ", 400, "not valid JSON"),
    (CI_TOKEN, b"{\"source\": \"" + b"x" * (1 << 20) + b"\"}", 413, "at most 1048576"),
])
def test_a_refused_request_enqueues_nothing(
        front: Front, token: str | None, body: object, status: int, names: str) -> None:
    source = f"{front.registries.source.host}/{REPO}"
    before = front.ledger.recent(1000)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with front.served.client() as client:
        if isinstance(body, bytes):
            answer = client.post("/v1/releases", content=body,
                                 headers={**headers, "Content-Type": "application/json"})
        else:
            text = json.loads(json.dumps(body).replace("SRC", source))
            answer = client.post("/v1/releases", json=text, headers=headers)

    assert answer.status_code == status, answer.text
    assert names in answer.json()["detail"]
    assert front.ledger.recent(1000) == before
    assert messages_in_broker(front.env["FANOUT_BROKER_URL"]) == 0
    _no_tokens_in(answer.text, front.served.log())


@pytest.mark.parametrize("sent", [
    b"",                                                                  # nothing at all
    b"POST /v1/releases HTTP/1.1\r\nHost: x\r\n",                         # headers, never ended
    b"POST /v1/releases HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n{",  # a body, begun
], ids=["silent", "slow-headers", "slow-body"])
def test_a_slow_client_is_cut_off_with_408(front: Front, sent: bytes) -> None:
    # The server runs with FANOUT_SERVE_REQUEST_TIMEOUT=1: each phase gets a second.
    port = int(front.served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
            if time.monotonic() - started > 25:
                break
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"did not arrive" in received


def test_any_copy_of_the_server_serves_any_release(front: Front, tmp_path: Path) -> None:
    # Stateless: a second server on the same Redis reads, follows and retries what the first
    # enqueued, as two copies behind a load balancer would.
    regs = front.registries
    images.push_oci_image(regs.source, REPO, "v3", layers=1)
    created = front.post("/v1/releases", {"source": f"{regs.source.host}/{REPO}:v3",
                                          "to": "release"}).json()
    with serving(tmp_path, front.served.config_path.read_text(), env=front.env) as other:
        with other.client(READER_TOKEN) as client:
            assert client.get(f"/v1/releases/{created['id']}").json()["id"] == created["id"]
        followed = Front(other, front.env, front.docker, regs, front.worker).events(created["id"])
    assert followed[-1] == ("end", {"id": created["id"], "ok": True})
