"""``fanout export``/``import`` end to end: releases recorded in a real Redis ledger, images in
real registries, the CLI run as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO_ROOT, fanout_env, run_fanout
from tests.support.images import (
    PushedImage,
    get_manifest,
    list_tags,
    manifest_exists,
    push_artifact,
    push_index,
    push_oci_image,
)
from tests.support.oci import fallback_tag
from tests.support.queue import RedisServer, ledger_for, wait_until
from tests.support.registries import RegistrySet
from tests.support.signing import push_cosign_signature, push_referrers_index, referrers_index

pytestmark = pytest.mark.timeout(120)


def _release(url: str, image: PushedImage, tags: tuple[str, ...]) -> str:
    ledger = ledger_for(url)
    release_id = ledger.create_release(f"{image.registry_host}/{image.repository}@{image.digest}",
                                       [("far.example/app", tags)])
    ledger.mark_running(release_id, "far.example/app", worker="w1@host")
    ledger.mark_succeeded(release_id, "far.example/app", stats={}, seconds=0.1)
    return release_id


def _fanout(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = run_fanout([*args, "--json"], env, timeout=60)
    try:
        document = json.loads(done.stdout) if done.stdout.strip() else {}
    except ValueError:
        document = {}
    return done.returncode, document, done.stderr + done.stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_window_goes_registry_to_bundle_to_registry_unchanged(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    source, far = registries.source, registries.dest1
    children = [push_oci_image(source, f"{unique_repo}/app", platform=p)
                for p in (("linux", "amd64"), ("linux", "arm64"))]
    index = push_index(source, f"{unique_repo}/app", "1.0", children)
    # As a client pushes them where there is no referrers API: the SBOM listed in the
    # fallback index (`sha256-<hex>`), the cosign signature tagged `sha256-<hex>.sig`.
    sbom = push_artifact(source, f"{unique_repo}/app", index)
    push_referrers_index(source, f"{unique_repo}/app", index.digest, [sbom])
    signature = push_cosign_signature(source, f"{unique_repo}/app", index)
    web = push_oci_image(source, f"{unique_repo}/web", "2.0")
    newer = push_oci_image(source, f"{unique_repo}/app", "1.1")
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    first = _release(redis_server.url, index, ("1.0", "latest"))
    _release(redis_server.url, web, ("2.0",))
    second = _release(redis_server.url, newer, ("1.1", "latest"))  # takes latest

    code, doc, log = _fanout(env, "export", str(tmp_path / "a.tar"), "--since", "1h")
    assert code == 0, log
    code, again, log = _fanout(env, "export", str(tmp_path / "b.tar"), "--since", "1h")
    assert code == 0, log
    assert doc["sha256"] == again["sha256"] == _sha256(tmp_path / "a.tar")  # deterministic
    releases = {i["digest"]: i["releases"] for i in doc["images"]}
    assert releases[index.digest] == [first] and releases[newer.digest] == [second]

    prefix = f"{source.host}/{unique_repo}"
    code, dry, log = _fanout(env, "import", str(tmp_path / "a.tar"), "--map",
                             f"{prefix}={far.host}/mirror/{unique_repo}", "--dry-run")
    assert code == 0 and not list_tags(far, f"mirror/{unique_repo}/app"), log
    assert {i["destination"] for i in dry["images"]} == {
        f"{far.host}/mirror/{unique_repo}/app", f"{far.host}/mirror/{unique_repo}/web"}

    code, _, log = _fanout(env, "import", str(tmp_path / "a.tar"), "--map",
                              f"{prefix}={far.host}/mirror/{unique_repo}")
    assert code == 0, log
    app = f"mirror/{unique_repo}/app"
    for ref, image in ((f"{app}:1.0", index), (f"{app}:latest", newer), (f"{app}:1.1", newer),
                       (f"mirror/{unique_repo}/web:2.0", web)):
        assert get_manifest(far, ref)[0] == image.manifest, ref  # byte for byte
    for child in children:
        assert manifest_exists(far, f"{app}@{child.digest}")
    # Its referrers travelled too: the SBOM (found at the far side through its fallback
    # index, as distribution 2.8 has no referrers API) and the cosign signature, byte for byte.
    assert get_manifest(far, f"{app}@{sbom.digest}")[0] == sbom.manifest
    assert [e["digest"] for e in referrers_index(far, app, index.digest)] == [sbom.digest]
    assert get_manifest(far, f"{app}:{fallback_tag(index.digest)}.sig")[0] == \
        signature.manifest


def test_an_empty_window_writes_no_bundle(redis_server: RedisServer, tmp_path: Path) -> None:
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    out = tmp_path / "bundles"
    out.mkdir()
    code, doc, log = _fanout(env, "export", str(out / "week.tar"), "--since", "7d")
    assert code == 0, log
    assert "nothing to export" in log
    assert doc["images"] == [] and doc["sha256"] is None and doc["ok"] is True
    assert list(out.iterdir()) == []  # no file, not even an empty archive


def test_unmapped_repositories_push_nothing(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    source, far = registries.source, registries.dest1
    image = push_oci_image(source, f"{unique_repo}/app", "1.0")
    _release(redis_server.url, image, ("1.0",))
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    assert _fanout(env, "export", str(tmp_path / "a.tar"), "--since", "1h")[0] == 0

    code, _, log = _fanout(env, "import", str(tmp_path / "a.tar"), "--map",
                           f"{source.host}/{unique_repo}/ap={far.host}/x")

    assert code == 2 and f"{source.host}/{unique_repo}/app" in log
    assert not manifest_exists(far, f"x/app@{image.digest}")


def test_an_incremental_bundle_needs_its_base_imported_first(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    source, far = registries.source, registries.dest2
    old = push_oci_image(source, f"{unique_repo}/app", "1.0", layers=3, layer_size=256 * 1024)
    _release(redis_server.url, old, ("1.0",))
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    week1 = tmp_path / "week1.tar"
    assert _fanout(env, "export", str(week1), "--since", "1h")[0] == 0
    new = push_oci_image(source, f"{unique_repo}/app", "1.1", layers=1, layer_size=1024)
    _release(redis_server.url, new, ("1.1",))

    full, week2 = tmp_path / "full.tar", tmp_path / "week2.tar"
    assert _fanout(env, "export", str(full), "--since", "1h")[0] == 0
    code, doc, log = _fanout(env, "export", str(week2), "--since", "1h", "--base", str(week1))
    assert code == 0, log
    assert week2.stat().st_size < full.stat().st_size / 2
    assert doc["base"]["name"] == "week1.tar" and set(old.blobs) <= set(doc["base"]["left_out"])

    prefix = f"{source.host}/{unique_repo}"
    code, doc, log = _fanout(env, "import", str(week2), "--map", f"{prefix}={far.host}/lone")
    assert code == 1
    [failed] = [i for i in doc["images"] if not i["ok"]]
    assert "week1.tar" in failed["error"] and set(failed["missing"]) == set(old.blobs)
    assert not list_tags(far, "lone/app") or "1.0" not in list_tags(far, "lone/app")

    target = f"{prefix}={far.host}/based/{unique_repo}"
    assert _fanout(env, "import", str(week1), "--map", target)[0] == 0
    code, _, log = _fanout(env, "import", str(week2), "--map", target)
    assert code == 0, log
    assert get_manifest(far, f"based/{unique_repo}/app:1.1")[0] == new.manifest


def test_a_corrupt_bundle_names_the_digest_and_tags_nothing(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    source, far = registries.source, registries.dest1
    image = push_oci_image(source, f"{unique_repo}/app", "1.0", layers=1, layer_size=64 * 1024)
    _release(redis_server.url, image, ("1.0",))
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    bundle = tmp_path / "a.tar"
    assert _fanout(env, "export", str(bundle), "--since", "1h")[0] == 0
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    with tarfile.open(bundle) as tar:
        offset = tar.getmember(f"blobs/sha256/{layer[7:]}").offset_data
    with bundle.open("r+b") as raw:
        raw.seek(offset + 100)
        byte = raw.read(1)
        raw.seek(offset + 100)
        raw.write(bytes([byte[0] ^ 0xFF]))

    code, doc, log = _fanout(env, "import", str(bundle), "--map",
                             f"{source.host}/{unique_repo}={far.host}/corrupt/{unique_repo}")

    assert code == 1, log
    assert layer in doc["images"][0]["error"]
    assert list_tags(far, f"corrupt/{unique_repo}/app") == []


def test_an_export_killed_mid_write_leaves_no_archive(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    source = registries.source
    small = push_oci_image(source, f"{unique_repo}/small", "1.0")
    _release(redis_server.url, small, ("1.0",))
    env = fanout_env(FANOUT_BROKER_URL=redis_server.url)
    previous = tmp_path / "previous.tar"
    assert _fanout(env, "export", str(previous), "--since", "1h")[0] == 0
    before = _sha256(previous)
    big = push_oci_image(source, f"{unique_repo}/big", "1.0", layers=2,
                         layer_size=48 * 1024 * 1024, compress=False)
    _release(redis_server.url, big, ("1.0",))
    target = tmp_path / "new.tar"

    process = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "export", str(target), "--since", "1h",
         "--base", str(previous)], env=env, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def writing() -> bool | None:
            return any(p.name.startswith(".new.tar.fanout-") and
                       sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) > 1 << 20
                       for p in tmp_path.iterdir()) or None
        wait_until(writing, timeout=60, what="the export writing its staging area")
        process.kill()
    finally:
        process.kill()
        process.wait(timeout=10)
    time.sleep(0)

    assert not target.exists()
    assert _sha256(previous) == before


def test_an_export_onto_a_full_disk_says_so_and_leaves_nothing(
    registries: RegistrySet, redis_server: RedisServer, unique_repo: str, tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    image = push_oci_image(registries.source, unique_repo, "1.0", layers=2,
                           layer_size=512 * 1024, compress=False)
    _release(redis_server.url, image, ("1.0",))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                   check=True)
    try:
        code, _, output = _fanout(fanout_env(FANOUT_BROKER_URL=redis_server.url), "export",
                                  str(small / "weekly.tar"), "--since", "1h")
        assert code == 1, output
        assert "No space left on device" in output and "Traceback" not in output, output
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
