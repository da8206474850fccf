"""Check images with skopeo: an independent client, so a copy is judged by someone else's code.

`checks.assert_same_image(..., skopeo=True)` asks it too; `assert_skopeo_same` is for a test that
has only references at hand.

Every call runs with an empty auth file, an empty registries.conf, an accept-anything policy and a
throwaway HOME, so nothing from the machine (~/.docker, ~/.config/containers) leaks in.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.support.oci import DOCKER_LIST, OCI_INDEX, sha256

_MANIFEST_LIST_TYPES = (OCI_INDEX, DOCKER_LIST)
_SKOPEO_TIMEOUT_S = 300


def skopeo_inspect_raw(ref: str, creds: str | None = None) -> bytes:
    """The manifest bytes exactly as the registry serves them."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        args += ["--creds", creds]
    return _run([*args, _docker(ref)])


def skopeo_digest(ref: str, creds: str | None = None) -> str:
    """`sha256:…` of the raw manifest bytes."""
    return sha256(skopeo_inspect_raw(ref, creds))


def skopeo_pull_all(ref: str, dest_dir: Path, creds: str | None = None) -> Path:
    """Copy every platform to a `dir:` layout; skopeo verifies each blob and manifest digest.

    `--preserve-digests` makes skopeo fail rather than convert a manifest. Returns `dest_dir`.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "copy",
        "--all",
        "--preserve-digests",
        "--remove-signatures",
        "--src-tls-verify=false",
    ]
    if creds is not None:
        args += ["--src-creds", creds]
    _run([*args, _docker(ref), f"dir:{dest_dir}"])
    return dest_dir


def assert_skopeo_same(
    src_ref: str,
    dst_ref: str,
    src_creds: str | None = None,
    dst_creds: str | None = None,
) -> bytes:
    """The destination serves byte-identical manifests (children too) and pulls in full.

    Returns the raw top-level manifest.
    """
    src_raw = skopeo_inspect_raw(src_ref, src_creds)
    dst_raw = skopeo_inspect_raw(dst_ref, dst_creds)
    assert dst_raw == src_raw, f"manifest differs: {sha256(src_raw)} at source, {sha256(dst_raw)}"
    doc = json.loads(src_raw)
    if doc.get("mediaType") in _MANIFEST_LIST_TYPES or "manifests" in doc:
        src_repo, dst_repo = _repository(src_ref), _repository(dst_ref)
        for child in doc["manifests"]:
            digest = child["digest"]
            src_child = skopeo_inspect_raw(f"{src_repo}@{digest}", src_creds)
            dst_child = skopeo_inspect_raw(f"{dst_repo}@{digest}", dst_creds)
            assert sha256(src_child) == digest, f"source child {digest} has other bytes"
            assert dst_child == src_child, f"child {digest} differs at destination"
    with tempfile.TemporaryDirectory(prefix="fanout-pull-") as tmp:
        skopeo_pull_all(dst_ref, Path(tmp) / "image", dst_creds)
    return src_raw


def _repository(ref: str) -> str:
    """`host:port/repo@digest` or `host:port/repo:tag` -> `host:port/repo`."""
    ref = ref.removeprefix("docker://")
    if "@" in ref:
        ref = ref.split("@", 1)[0]
    host, _, path = ref.partition("/")
    if ":" in path:
        path = path.rsplit(":", 1)[0]
    return f"{host}/{path}"


def _docker(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _run(args: list[str]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fanout-skopeo-") as tmp:
        home = Path(tmp)
        authfile = home / "auth.json"
        authfile.write_text('{"auths": {}}')
        registries_conf = home / "registries.conf"
        registries_conf.write_text("")
        policy = home / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "DOCKER_CONFIG": str(home / ".docker"),
            "REGISTRY_AUTH_FILE": str(authfile),
            "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
            "TMPDIR": str(home),
        }
        subcommand, *rest = args
        command = [
            "skopeo",
            "--policy",
            str(policy),
            "--registries.d",
            str(home),
            subcommand,
            f"--authfile={authfile}",
            *rest,
        ]
        result = subprocess.run(
            command,
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=_SKOPEO_TIMEOUT_S,
        )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(_redacted(command))} failed ({result.returncode}):\n"
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result.stdout


def _redacted(command: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in command:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in ("--creds", "--src-creds", "--dest-creds"):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out
