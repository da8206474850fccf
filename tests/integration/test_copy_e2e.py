"""``fanout copy`` end to end: real registries (anonymous, htpasswd, token auth), verified by
skopeo, an independent client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import images
from tests.support.cli import REPO_ROOT, fanout_env, run_fanout, write_docker_config
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.skopeo import assert_skopeo_same

PUSHERS: dict[str, Callable[..., images.PushedImage]] = {
    "oci-image": images.push_oci_image,
    "oci-index": images.push_oci_index,
    "docker-list": images.push_docker_manifest_list,
    "docker-image": images.push_docker_image,
}


def _destinations(registries: RegistrySet) -> list[RegistryServer]:
    return [registries.dest1, registries.dest2, registries.basic, registries.token]


@pytest.fixture
def config_dir(tmp_path: Path, registries: RegistrySet) -> Path:
    return write_docker_config(tmp_path / "docker", registries.all())


@pytest.mark.parametrize("kind", sorted(PUSHERS))
def test_copy_every_kind_to_every_auth_kind(
    kind: str, registries: RegistrySet, unique_repo: str, config_dir: Path,
) -> None:
    image = PUSHERS[kind](registries.source, unique_repo, "v1")
    dests = _destinations(registries)
    targets = [f"{d.host}/{unique_repo}" for d in dests]
    out = run_fanout(["copy", image.tagged_reference or "", *targets, "--json"],
                     fanout_env(config_dir))
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert {d["digest"] for d in report["destinations"]} == {image.digest}
    for server, row in zip(dests, report["destinations"], strict=True):
        assert row["status"] == "succeeded"
        assert row["tags"] == ["v1"]
        assert row["bytes_transferred"] == image.total_blob_bytes
        assert_skopeo_same(image.reference, f"{server.host}/{unique_repo}:v1",
                           dst_creds=server.creds)

    again = run_fanout(["copy", image.reference, f"{registries.dest1.host}/{unique_repo}:v1",
                        "--json"], fanout_env(config_dir))
    assert again.returncode == 0, again.stderr
    row = json.loads(again.stdout)["destinations"][0]
    assert row["bytes_transferred"] == 0 and row["blobs_uploaded"] == 0
    assert row["manifests_skipped"] == 1


def test_artifact_with_subject_and_empty_config(
    registries: RegistrySet, unique_repo: str, config_dir: Path,
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "v1")
    sbom = images.push_artifact(registries.source, unique_repo, image, tag="sbom")
    dest = f"{registries.dest2.host}/{unique_repo}"
    out = run_fanout(["copy", sbom.tagged_reference or "", dest, "--no-referrers"],
                     fanout_env(config_dir))
    assert out.returncode == 0, out.stderr + out.stdout
    assert_skopeo_same(sbom.reference, f"{dest}:sbom")


def test_one_destination_down_others_succeed(
    registries: RegistrySet, unique_repo: str, config_dir: Path,
    fresh_registry: Callable[..., RegistryServer],
) -> None:
    down = fresh_registry()
    down.stop()
    image = images.push_oci_index(registries.source, unique_repo, "v2")
    env = fanout_env(config_dir, FANOUT_CONNECT_TIMEOUT="1")
    out = run_fanout(["copy", image.tagged_reference or "", f"{down.host}/{unique_repo}",
                      f"{registries.dest1.host}/{unique_repo}", "--json"], env)
    assert out.returncode == 1, out.stderr
    rows = json.loads(out.stdout)["destinations"]
    assert rows[0]["status"] == "failed" and rows[0]["error"]["transient"] is True
    assert rows[1]["status"] == "succeeded"
    assert_skopeo_same(image.reference, f"{registries.dest1.host}/{unique_repo}:v2")


def test_wrong_password_fails_permanently_without_leaking_it(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    config = write_docker_config(tmp_path / "docker", registries.all(),
                                 wrong_password=[registries.basic.host, registries.token.host])
    image = images.push_oci_image(registries.source, unique_repo, "v1")
    targets = [f"{s.host}/{unique_repo}"
               for s in (registries.basic, registries.token, registries.dest1)]
    out = run_fanout(["-vv", "copy", image.reference, *targets, "--json"], fanout_env(config))
    assert out.returncode == 1
    rows = json.loads(out.stdout)["destinations"]
    assert [r["status"] for r in rows] == ["failed", "failed", "succeeded"]
    assert all(r["error"]["transient"] is False for r in rows[:2])
    for secret in ("not-the-password", registries.basic.password, registries.token.password):
        assert secret and secret not in out.stdout + out.stderr


def test_human_output_and_default_tag(
    registries: RegistrySet, unique_repo: str, config_dir: Path,
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "release-1")
    out = run_fanout(["copy", image.tagged_reference or "",
                      f"{registries.dest1.host}/{unique_repo}",
                      f"{registries.dest2.host}/{unique_repo}:pinned", "--tag", "extra"],
                     fanout_env(config_dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("2 of 2 destinations succeeded")
    assert "tags: release-1, extra" in lines[0] or "tags: extra" in lines[0]
    assert_skopeo_same(image.reference, f"{registries.dest2.host}/{unique_repo}:pinned")
    assert_skopeo_same(image.reference, f"{registries.dest2.host}/{unique_repo}:extra")


@pytest.mark.parametrize(("args", "message"), [
    (["copy", "Bad/Name:v1", "127.0.0.1:1/x"], "lowercase"),
    (["copy", "127.0.0.1:1/app:v1", "127.0.0.1:1/x@sha256:" + "0" * 64], "has a digest"),
    (["copy", "127.0.0.1:1/app:v1", "127.0.0.1:1/x", "--tag", "bad tag"], "tag"),
    (["copy", "127.0.0.1:1/app@md5:abc", "127.0.0.1:1/x"], "md5"),
    (["copy", "127.0.0.1:1/app:v1"], "DEST"),
])
def test_usage_errors_exit_2_and_name_the_problem(args: list[str], message: str) -> None:
    out = run_fanout(args, fanout_env())
    assert out.returncode == 2, out.stdout + out.stderr
    assert message.lower() in out.stderr.lower()


def test_missing_source_fails_clearly(registries: RegistrySet, unique_repo: str) -> None:
    out = run_fanout(["copy", f"{registries.source.host}/{unique_repo}:nope",
                      f"{registries.dest1.host}/{unique_repo}"], fanout_env())
    assert out.returncode == 1
    assert "nope" in out.stdout + out.stderr


def test_a_registry_to_registry_copy_loads_only_what_it_uses(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    # A whole copy, by the modules it loaded (never by time; docs/benchmarks.md, "Copy CPU"):
    # no OCI layout package (a registry reference is told apart by registry.layout_ref), no
    # queue, exporter, display, nor our dependencies' optional extras; the output all there
    # after the quick exit.
    image = images.push_oci_image(registries.source, unique_repo, "v1")
    code = ("import sys\nfrom producer import cli\n"
            f"sys.argv = ['fanout', 'copy', {image.reference!r}, "
            f"{registries.dest1.host + '/' + unique_repo!r}, '--tag', 'v1']\n"
            "import atexit\n"
            "atexit.register(lambda: print('modules:' + ','.join(sorted(\n"
            "    k for k, v in sys.modules.items() if v is not None))))\n"
            "cli.console()")
    out = subprocess.run([sys.executable, "-c", code], env=fanout_env(tmp_path),
                         cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 of 1 destinations succeeded" in out.stdout
    loaded = set(out.stdout.rsplit("modules:", 1)[1].strip().split(","))
    assert {"registry.copy", "registry.referrers", "registry.layout_ref"} <= loaded
    assert not {name for name in loaded if name.startswith("registry.layout.")
                or name == "registry.layout"}
    packages = {name.split(".")[0] for name in loaded}
    assert not packages & {"celery", "kombu", "redis", "billiard", "prometheus_client", "rich",
                           "click", "pygments", "tornado", "tarfile", "service", "fastapi"}
    assert {name for name in loaded if name.split(".")[0] == "workers"} <= {
        "workers", "workers.errors"}
