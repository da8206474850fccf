"""The broker and ledger over TLS with a Redis ACL user: ``rediss://user:password@host:port/0``
with the private CA named in the URL (``ssl_ca_certs``), against a real ``redis-server`` that
speaks only TLS and has its default user switched off. A release goes through, and the
password appears in no log, no CLI output and nothing the ledger keeps."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.support.cli import run_fanout, write_docker_config
from tests.support.images import push_oci_image
from tests.support.ports import free_port
from tests.support.queue import queue_env, start_worker, wait_until
from tests.support.registries import RegistrySet, write_tls_files
from tests.support.skopeo import assert_skopeo_same

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


def test_a_release_through_a_tls_redis_with_an_acl_user(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    ca, cert, key = write_tls_files(tmp_path)
    password = "acl-" + secrets.token_hex(12)
    (tmp_path / "users.acl").write_text(
        f"user default off\nuser fanout on >{password} ~* &* +@all\n")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--aclfile", str(tmp_path / "users.acl"), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = (f"rediss://fanout:{password}@127.0.0.1:{port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={ca}")
    client = redis.Redis.from_url(url)

    def answers() -> bool | None:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return None

    wait_until(answers, 10, "the TLS redis-server answering")
    # Plain text, or TLS without the CA, is refused: the test is really on TLS.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://fanout:{password}@127.0.0.1:{port}/0").ping()
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1)
    destination = f"{registries.dest1.host}/{unique_repo}"
    env = queue_env(url, write_docker_config(tmp_path / "docker", []))
    worker = None
    try:
        worker = start_worker("tls", env, tmp_path, loglevel="DEBUG")
        done = run_fanout(["enqueue", image.reference, destination, "--tag", "v1", "--wait",
                           "--timeout", "60", "--json"], env)
        status = run_fanout(["status", "--json"], env)
    finally:
        if worker is not None:
            worker.stop()
        logs = worker.log() if worker is not None else ""
        kept = [str(client.dump(k)) for k in client.keys("fanout:*")]
        server.terminate()
        server.wait(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr + logs[-3000:]
    assert status.returncode == 0, status.stderr
    assert_skopeo_same(image.reference, f"{destination}:v1")
    for where, text in [("worker log", logs), ("enqueue", done.stdout + done.stderr),
                        ("status", status.stdout + status.stderr), ("ledger", "\n".join(kept))]:
        assert password not in text, f"the Redis password appears in the {where}"
