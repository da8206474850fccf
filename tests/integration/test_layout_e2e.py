"""OCI layouts and archives as places (issue 17 §1), end to end: real registries, the real
``fanout copy`` command, and skopeo reading what fanout wrote and writing what fanout reads."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.cli import main as fanout
from tests.support import images
from tests.support.oci import sha256
from tests.support.registries import RegistrySet
from tests.support.signing import push_signed_release
from tests.support.skopeo import skopeo_inspect_raw

from .test_referrers_e2e import assert_release_at

pytestmark = pytest.mark.integration


def _skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True,
                          timeout=300).stdout


def _copy(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = fanout(["copy", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_a_signed_index_goes_registry_to_archive_to_registry(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    release = push_signed_release(registries.source, unique_repo)
    archive = tmp_path / "app.tar"

    code, report = _copy(capsys, release.image.tagged_reference or "", f"oci-archive:{archive}")
    assert code == 0, report
    code, report = _copy(capsys, f"oci-archive:{archive}:v1",
                         f"{registries.dest1.host}/{unique_repo}")
    assert code == 0, report

    assert_release_at(registries.dest1, unique_repo, release, registries.source, skopeo=True)
    # skopeo reads the archive fanout wrote: the same bytes, so the same digest.
    raw = _skopeo("inspect", "--raw", f"oci-archive:{archive}:v1")
    assert sha256(raw) == release.image.digest
    sig_tag = release.signature.tag or ""
    assert sha256(_skopeo("inspect", "--raw", f"oci-archive:{archive}:{sig_tag}")) == \
        release.signature.digest
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    digests = {e["digest"] for e in index["manifests"]}
    # The root (tagged), the cosign signature (tagged), the OCI referrers (by subject).
    assert {release.image.digest, release.signature.digest, release.sbom.digest,
            release.sbom_signature.digest} == digests


def test_fanout_reads_what_skopeo_writes_and_writes_what_it_reads(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.push_oci_index(registries.source, unique_repo, "v2",
                                  platforms=[("linux", "amd64"), ("linux", "arm64")],
                                  layer_size=4096)
    src = f"docker://{registries.source.host}/{unique_repo}:v2"
    for kind, place in (("oci", tmp_path / "sk-dir"), ("oci-archive", tmp_path / "sk.tar")):
        _skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false", src,
                f"{kind}:{place}:v2")
        target = f"{registries.dest2.host}/{unique_repo}/{kind}"
        code, report = _copy(capsys, f"{kind}:{place}:v2", target)
        assert code == 0, report
        assert sha256(skopeo_inspect_raw(f"{target}:v2")) == image.digest

    # fanout writes a directory layout; skopeo copies from it back to a registry.
    layout = tmp_path / "fanout-dir"
    code, report = _copy(capsys, image.tagged_reference or "", f"oci:{layout}")
    assert code == 0, report
    back = f"{registries.dest1.host}/{unique_repo}/back:v2"
    _skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
            f"oci:{layout}:v2", f"docker://{back}")
    assert sha256(skopeo_inspect_raw(back)) == image.digest


def test_a_corrupt_archive_fails_naming_the_digest_and_tags_nothing(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "v1", layer_size=200_000)
    archive = tmp_path / "app.tar"
    code, report = _copy(capsys, image.tagged_reference or "", f"oci-archive:{archive}")
    assert code == 0, report
    with tarfile.open(archive) as tar:
        largest = max((m for m in tar.getmembers() if m.isreg()), key=lambda m: m.size)
    digest = "sha256:" + largest.name.rsplit("/", 1)[1]
    data = bytearray(archive.read_bytes())
    data[largest.offset_data + 1000] ^= 0xFF
    archive.write_bytes(bytes(data))

    target = f"{registries.dest1.host}/{unique_repo}/corrupt"
    code, report = _copy(capsys, f"oci-archive:{archive}:v1", target)

    assert code == 1
    assert digest in json.dumps(report)
    assert not images.manifest_exists(registries.dest1, f"{unique_repo}/corrupt:v1")


def test_several_images_share_one_layout_and_its_blobs(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = images.push_oci_image(registries.source, unique_repo, "a", layer_size=4096)
    second = images.push_oci_index(registries.source, unique_repo, "b",
                                   platforms=[("linux", "amd64")], layer_size=4096)
    layout = tmp_path / "many"
    for image in (first, second):
        code, report = _copy(capsys, image.tagged_reference or "", f"oci:{layout}")
        assert code == 0, report
    names = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"]
             for e in json.loads((layout / "index.json").read_text())["manifests"]}
    assert names == {"a": first.digest, "b": second.digest}
    # Copying the first again writes nothing new, and keeps both entries.
    before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    code, report = _copy(capsys, first.tagged_reference or "", f"oci:{layout}")
    assert code == 0, report
    assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == before
    assert report["destinations"][0]["blobs_uploaded"] == 0  # type: ignore[index]


def test_an_optional_layout_destination_is_optional_like_any_other(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "v1", layer_size=4096)
    target = f"{registries.dest1.host}/{unique_repo}/copy"
    layout = tmp_path / "optional"
    code, report = _copy(capsys, image.tagged_reference or "", target, "--optional",
                         f"oci:{layout}")
    assert code == 0, report
    assert {d["destination"]: d["optional"] for d in report["destinations"]} == {  # type: ignore[attr-defined]
        target: False, f"oci:{layout}": True}
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == image.digest

    # One that fails (its blobs/ is a file, so no blob can land) fails alone: exit 0.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (broken / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    (broken / "blobs").write_text("not a directory")
    code, report = _copy(capsys, image.tagged_reference or "", target, "--optional",
                         f"oci:{broken}")
    assert code == 0, report
    failed = {d["destination"]: d for d in report["destinations"]}[f"oci:{broken}"]  # type: ignore[attr-defined]
    assert failed["optional"] is True and failed["status"] == "failed", report
    assert json.loads((broken / "index.json").read_text())["manifests"] == []


def test_bad_layout_references_are_usage_errors(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert fanout(["copy", f"oci:{tmp_path}/missing:v1", "localhost:5000/x"]) == 2
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"hello")
    assert fanout(["copy", f"oci-archive:{not_tar}:v1", "localhost:5000/x"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "not a tar" in err


def test_a_missing_directory_is_a_usage_error_naming_the_destination(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"oci-archive:{tmp_path}/no/such/dir/app.tar"
    assert fanout(["copy", "localhost:5000/x@sha256:" + "0" * 64, dest]) == 2
    err = capsys.readouterr().err
    assert f"{dest}: No such file or directory" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system: too small for the image, so the layout's writes fail."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_fails_its_layout_alone_naming_why_and_leaves_nothing(
    registries: RegistrySet, unique_repo: str, small_disk: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.push_oci_image(registries.source, unique_repo, "v1", layers=2,
                                  layer_size=512 * 1024, compress=False)
    target = f"{registries.dest1.host}/{unique_repo}/copy"
    archive, layout = f"oci-archive:{small_disk}/app.tar", f"oci:{small_disk}/app"
    code, report = _copy(capsys, image.tagged_reference or "", target, archive, layout)
    assert code == 1, report
    outcome = {d["destination"]: d for d in report["destinations"]}  # type: ignore[attr-defined]
    assert outcome[target]["status"] == "succeeded"
    for dest in (archive, layout):
        assert outcome[dest]["status"] == "failed"
        message = outcome[dest]["error"]["message"]
        assert message.startswith(f"{dest}: cannot write: No space left on device"), message
    # Nothing half-written: no archive, no layout, no staging left behind.
    assert list(small_disk.iterdir()) == []
