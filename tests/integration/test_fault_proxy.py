"""The fault-injecting proxy itself, in front of a real registry, driven with plain httpx."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import images
from tests.support.fault_proxy import (
    CutRequest,
    CutResponse,
    Delay,
    DropLocation,
    FaultProxy,
    FlipBytes,
    Redirect,
    Refuse,
    Rule,
    Stall,
    Status,
    TooManyRequests,
    WrongDigest,
)
from tests.support.registries import RegistryServer, RegistrySet

BLOB = r"/blobs/sha256:"
UPLOADS = r"/blobs/uploads/"


@pytest.fixture
def proxy(registries: RegistrySet) -> Iterator[FaultProxy]:
    with FaultProxy(registries.source.url) as started:
        yield started


def through(server: RegistryServer, proxy: FaultProxy) -> RegistryServer:
    """The same registry, as a client that only knows the proxy's address sees it."""
    return dataclasses.replace(server, host=proxy.host, url=proxy.url)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_url(proxy: FaultProxy, image: images.PushedImage, index: int = -1) -> str:
    return f"{proxy.url}/v2/{image.repository}/blobs/{image.blobs[index]}"


def test_push_and_pull_stream_through_and_locations_point_back(
    registries: RegistrySet, proxy: FaultProxy, unique_repo: str,
) -> None:
    # 3 MiB layers: many 64 KiB pieces each way, Content-Length framed both ways.
    image = images.push_oci_image(through(registries.source, proxy), unique_repo, "v1",
                                  layer_size=3 * 1024 * 1024)
    # Every upload's PUT came back through the proxy: the POST's Location was rewritten.
    assert proxy.count("PUT", UPLOADS, status=201) == len(image.blobs)
    assert proxy.count("POST", UPLOADS, status=202) == len(image.blobs)
    raw, _ = images.get_manifest(registries.source, f"{unique_repo}@{image.digest}")
    assert raw == image.manifest
    for digest in image.blobs:
        body = httpx.get(f"{proxy.url}/v2/{unique_repo}/blobs/{digest}").content
        assert _sha(body) == digest
    started = httpx.post(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["location"].startswith(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/")
    assert httpx.delete(started.headers["location"]).status_code == 204


def test_status_n_times_then_passes(proxy: FaultProxy) -> None:
    rule = proxy.add(Rule(Status(503), method="GET", path=r"^/v2/$", times=2))
    codes = [httpx.get(f"{proxy.url}/v2/").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert rule.hits == 2
    assert proxy.count("GET", r"^/v2/$", status=503) == 2
    assert [s.fault for s in proxy.seen] == ["Status", "Status", None]


def test_status_with_headers_and_body_until_cleared(proxy: FaultProxy) -> None:
    body = b'{"errors":[{"code":"TOOMANYREQUESTS"}]}'
    proxy.add(Rule(Status(429, {"Retry-After": "2", "Content-Type": "application/json"}, body)))
    for _ in range(3):
        answer = httpx.get(f"{proxy.url}/v2/")
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "2"
        assert answer.content == body
    proxy.clear()
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200


def test_too_many_requests_for_a_window_names_it_once(proxy: FaultProxy) -> None:
    rule = proxy.add(Rule(TooManyRequests(retry_after="1"), path=r"^/v2/$", window=0.5))
    first, second = (httpx.get(f"{proxy.url}/v2/") for _ in range(2))
    assert (first.status_code, first.headers.get("retry-after")) == (429, "1")
    assert (second.status_code, second.headers.get("retry-after")) == (429, None)
    assert b"TOOMANYREQUESTS" in second.content
    time.sleep(0.6)
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200  # the window has passed
    assert rule.hits == 2 and rule.opened == proxy.seen[0].time
    assert [s.fault for s in proxy.seen] == ["TooManyRequests", "TooManyRequests", None]


def test_rules_match_method_and_path(proxy: FaultProxy, registries: RegistrySet,
                                     unique_repo: str) -> None:
    image = images.push_oci_image(registries.source, unique_repo, layers=1)
    proxy.add(Rule(Status(500), method="PUT", path=BLOB))
    proxy.add(Rule(Status(502), method="HEAD", path=r"/manifests/"))
    assert httpx.head(_blob_url(proxy, image)).status_code == 200
    assert httpx.get(f"{proxy.url}/v2/{unique_repo}/manifests/{image.digest}",
                     headers={"Accept": images.MANIFEST_ACCEPT}).status_code == 200
    assert httpx.head(f"{proxy.url}/v2/{unique_repo}/manifests/{image.digest}").status_code == 502


def test_cut_response_after_k_bytes(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str,
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, layers=1,
                                  layer_size=256 * 1024, compress=False)
    proxy.add(Rule(CutResponse(1000), method="GET", path=BLOB, times=1))
    received = bytearray()
    with pytest.raises(httpx.TransportError), httpx.stream("GET", _blob_url(proxy, image)) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            received += piece
    assert len(received) == 1000
    assert _sha(httpx.get(_blob_url(proxy, image)).content) == image.blobs[-1]
    assert [(s.status, s.fault) for s in proxy.seen] == [(200, "CutResponse"), (200, None)]


def test_cut_request_after_k_bytes_never_commits(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str,
) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    digest = _sha(data)
    proxy.add(Rule(CutRequest(1000), method="PUT", path=UPLOADS, times=1))

    def upload() -> httpx.Response:
        started = httpx.post(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/")
        assert started.status_code == 202
        return httpx.put(f"{started.headers['location']}&digest={digest}", content=data)

    with pytest.raises(httpx.TransportError):
        upload()
    assert not images.blob_exists(registries.source, unique_repo, digest)
    assert upload().status_code == 201
    assert images.blob_exists(registries.source, unique_repo, digest)


def test_chunked_request_body_is_forwarded(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str,
) -> None:
    data = b"x" * 300_000
    started = httpx.post(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/")

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 70_000):
            yield data[i:i + 70_000]

    put = httpx.put(f"{started.headers['location']}&digest={_sha(data)}", content=pieces())
    assert put.request.headers["transfer-encoding"] == "chunked"
    assert put.status_code == 201, put.text
    assert images.blob_exists(registries.source, unique_repo, _sha(data))


def test_stall_outlasts_the_client_timeout(proxy: FaultProxy) -> None:
    proxy.add(Rule(Stall(10), method="GET", path=r"^/v2/$", times=1))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{proxy.url}/v2/", timeout=0.3)
    assert time.monotonic() - started < 2
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200


def test_delay_then_forward(proxy: FaultProxy) -> None:
    proxy.add(Rule(Delay(0.3), method="GET", path=r"^/v2/$", times=1))
    started = time.monotonic()
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200
    assert time.monotonic() - started >= 0.3
    (seen,) = proxy.seen
    assert (seen.status, seen.fault) == (200, "Delay")


def test_clear_ends_a_stall_under_way(proxy: FaultProxy) -> None:
    proxy.add(Rule(Stall(30)))
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            outcome.append(httpx.get(f"{proxy.url}/v2/", timeout=60).status_code)
        except httpx.TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    proxy.wait_for(lambda: proxy.count() == 1, timeout=5)
    started = time.monotonic()
    proxy.clear()
    thread.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_flip_bytes_keeps_the_length(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str,
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, layers=1,
                                  layer_size=200 * 1024, compress=False)
    proxy.add(Rule(FlipBytes(at=70_000, count=3), method="GET", path=BLOB))
    good = httpx.get(f"{registries.source.url}/v2/{unique_repo}/blobs/{image.blobs[-1]}").content
    bad = httpx.get(_blob_url(proxy, image)).content
    assert len(bad) == len(good)
    assert [i for i in range(len(good)) if good[i] != bad[i]] == [70_000, 70_001, 70_002]


def test_wrong_docker_content_digest(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str,
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "v1", layers=1)
    proxy.add(Rule(WrongDigest(), path=r"/manifests/"))
    url = f"{proxy.url}/v2/{unique_repo}/manifests/v1"
    for method in ("GET", "HEAD"):
        answer = httpx.request(method, url, headers={"Accept": images.MANIFEST_ACCEPT})
        assert answer.status_code == 200
        assert answer.headers.get_list("docker-content-digest") == ["sha256:" + "0" * 64]
    assert httpx.get(url, headers={"Accept": images.MANIFEST_ACCEPT}).content == image.manifest


def test_redirect_to_another_host_carries_no_authorization(registries: RegistrySet) -> None:
    basic = registries.basic
    assert basic.username and basic.password
    with FaultProxy(basic.url) as front, FaultProxy(basic.url) as elsewhere:
        front.add(Rule(Redirect(elsewhere.url), method="GET", path=r"^/v2/$"))
        answer = httpx.get(f"{front.url}/v2/", auth=(basic.username, basic.password),
                           follow_redirects=True)
        assert answer.status_code == 401  # the other host asked, and got no credentials
        assert [(s.status, s.authorization) for s in front.seen] == [(307, True)]
        assert [(s.status, s.authorization) for s in elsewhere.seen] == [(401, False)]


def test_drop_location_of_an_upload(proxy: FaultProxy, unique_repo: str) -> None:
    proxy.add(Rule(DropLocation(), method="POST", path=UPLOADS, times=1))
    dropped = httpx.post(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/")
    assert dropped.status_code == 202
    assert "location" not in dropped.headers
    assert "docker-upload-uuid" in dropped.headers  # everything else passes
    assert "location" in httpx.post(f"{proxy.url}/v2/{unique_repo}/blobs/uploads/").headers


def test_refuse_resets_and_stop_listening_refuses(proxy: FaultProxy) -> None:
    proxy.add(Rule(Refuse(), times=1))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{proxy.url}/v2/")
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200
    host = proxy.host
    proxy.stop_listening()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proxy.url}/v2/")
    proxy.start()
    assert proxy.host == host
    assert httpx.get(f"{proxy.url}/v2/").status_code == 200


def test_seen_records_time_and_authorization(registries: RegistrySet) -> None:
    basic = registries.basic
    assert basic.username and basic.password
    with FaultProxy(basic.url) as proxy:
        before = time.monotonic()
        assert httpx.get(f"{proxy.url}/v2/").status_code == 401
        assert httpx.get(f"{proxy.url}/v2/?x=1", auth=(basic.username, basic.password)
                         ).status_code == 200
        first, second = proxy.seen
        assert before <= first.time <= second.time <= time.monotonic()
        assert (first.method, first.path, first.status, first.authorization) == (
            "GET", "/v2/", 401, False)
        assert (second.query, second.status, second.authorization) == ("x=1", 200, True)
        assert proxy.count("GET", status=200) == 1
