"""What ``fanout export``/``import`` print, and how a bundle's entries and base are read back."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from producer.bundle_base import read_base
from producer.bundle_format import (
    REF_NAME,
    BaseInfo,
    bundled_images,
    entry_annotations,
    split_ref_name,
)
from producer.bundle_output import export_json, import_json, print_export, print_import
from producer.bundle_results import BundleResult, ImageOutcome
from producer.common import UsageError

D1, D2, L1, L2 = ("sha256:" + c * 64 for c in "abcd")


@dataclass
class Entry:
    ref_name: str | None
    digest: str
    annotations: dict[str, str] = field(default_factory=dict)


def _entry(ref_name: str | None, digest: str, repository: str, release: str,
           base: BaseInfo | None = None) -> Entry:
    annotations = entry_annotations(repository, release, base)
    if ref_name:
        annotations[REF_NAME] = ref_name
    return Entry(ref_name, digest, annotations)


def test_entries_group_into_images_and_referrers_stay_out() -> None:
    base = BaseInfo("week1.tar", "f" * 64, (L1, L2))
    entries = [
        _entry("ghcr.io/acme/app:1.4", D1, "ghcr.io/acme/app", "r2", base),
        _entry("ghcr.io/acme/app:latest", D1, "ghcr.io/acme/app", "r2", base),
        Entry("ghcr.io/acme/app:sha256-" + "a" * 64 + ".sig", D2),  # cosign: a referrer
        _entry(None, D2, "localhost:5000/acme/web", "r1"),
    ]

    images = bundled_images(entries)

    assert [(i.repository, i.digest, i.tags, i.releases) for i in images] == [
        ("ghcr.io/acme/app", D1, ("1.4", "latest"), ("r2",)),
        ("localhost:5000/acme/web", D2, (), ("r1",))]
    assert images[0].base == base and images[0].left_out == (L1, L2)
    assert images[1].base is None and images[1].left_out == ()


def test_ref_names_split_at_the_tag_not_the_port() -> None:
    assert split_ref_name("localhost:5000/acme/app:1.4") == ("localhost:5000/acme/app", "1.4")
    assert split_ref_name("localhost:5000/acme/app") == ("localhost:5000/acme/app", None)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_base_counts_its_members_and_what_it_left_out_itself(tmp_path: Path) -> None:
    index = {"schemaVersion": 2, "manifests": [
        {"digest": D1, "mediaType": "x", "size": 1, "annotations":
         BaseInfo("week0.tar", "0" * 64, (L2,)).annotations()}]}
    path = _tar(tmp_path / "week1.tar", {
        "oci-layout": b"{}", "index.json": json.dumps(index).encode(),
        f"blobs/sha256/{D1[7:]}": b"m", f"blobs/sha256/{L1[7:]}": b"l"})

    base = read_base(str(path))

    assert base.name == "week1.tar" and len(base.sha256) == 64
    assert base.blobs == {D1, L1, L2}


@pytest.mark.parametrize("members", [{"oci-layout": b"{}"}, {"index.json": b"[]"}])
def test_a_base_that_is_no_bundle_is_a_usage_error(tmp_path: Path,
                                                   members: dict[str, bytes]) -> None:
    with pytest.raises(UsageError, match="--base"):
        read_base(str(_tar(tmp_path / "x.tar", members)))
    with pytest.raises(UsageError, match="--base"):
        read_base(str(tmp_path / "missing.tar"))


def _result(command: str, *images: ImageOutcome, **kwargs: object) -> BundleResult:
    return BundleResult(command, "b.tar", images, 1.25, **kwargs)  # type: ignore[arg-type]


def test_export_summary_and_json() -> None:
    ok = ImageOutcome("ghcr.io/acme/app", D1, ("1.4",), "the bundle", ("r1",), 2048, 1)
    result = _result("export", ok, sha256="e" * 64, size=4096,
                     base=BaseInfo("week1.tar", "f" * 64, (L1,)), blobs_left_out=(L1,))
    out = io.StringIO()

    print_export(result, out)

    text = out.getvalue()
    assert "ok     ghcr.io/acme/app@sha256:aaaaaaaaaaaa" in text and "tags: 1.4" in text
    assert "1 images, 1 tags written to b.tar" in text and "e" * 64 in text
    assert "1 blobs left out" in text and "week1.tar" in text
    document = json.loads(export_json(result))
    assert document["ok"] and document["sha256"] == "e" * 64
    assert document["base"]["left_out"] == [L1]
    assert document["images"][0]["releases"] == ["r1"]


def test_a_failed_export_says_nothing_was_written() -> None:
    bad = ImageOutcome("ghcr.io/acme/app", D1, (), "the bundle", error="DENIED")
    out = io.StringIO()

    print_export(_result("export", bad), out)

    assert "FAILED" in out.getvalue() and "b.tar was not written" in out.getvalue()


def test_import_names_the_missing_blobs_and_dry_run_pushes_nothing() -> None:
    missing = ImageOutcome("ghcr.io/acme/app", D1, ("1.4",), "registry.airgap/acme/app",
                           error="left out", missing=(L1, L2))
    out = io.StringIO()

    print_import(_result("import", missing), out)

    assert f"missing at registry.airgap/acme/app: {L1}" in out.getvalue()
    assert "0 of 1 images pushed" in out.getvalue()
    dry = _result("import", ImageOutcome("ghcr.io/acme/app", D1, ("1.4",),
                                          "registry.airgap/acme/app"), dry_run=True)
    out = io.StringIO()
    print_import(dry, out)
    assert "would push ghcr.io/acme/app@" in out.getvalue() and "nothing was" in out.getvalue()
    assert json.loads(import_json(dry))["dry_run"] is True


@pytest.mark.parametrize("argv", [
    ["import", "b.tar", "--map", "ghcr.io/acme"],
    ["import", "b.tar"],
    ["export", "b.tar"],
    ["export", "b.tar", "--since", "7 days"],
    ["export", "b.tar", "--since", "7d", "--to", "x", "--source-repo", "ghcr.io/a/b"],
    ["import", "/nonexistent/b.tar", "--map", "ghcr.io/acme=registry.airgap/acme"],
    ["import", "/", "--map", "ghcr.io/acme=registry.airgap/acme"],
])
def test_usage_errors_exit_2_before_anything_is_read(argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from producer.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)

    assert code == 2
    assert capsys.readouterr().err
