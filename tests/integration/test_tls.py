"""TLS: verification is on, a private CA is trusted only when given, and a loopback registry
that speaks TLS is reached over HTTPS (tried first, as Docker and crane do)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable

from registry.copy import Copier
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.session import Registries
from registry.tls import TrustOnFirstUse
from tests.support import images
from tests.support.cli import fanout_env, run_fanout
from tests.support.registries import RegistryServer, RegistrySet


def test_a_tls_registry_with_a_private_ca(
    registries: RegistrySet, unique_repo: str, fresh_registry: Callable[..., RegistryServer],
) -> None:
    secure = fresh_registry(tls=True)
    assert secure.ca_path is not None
    image = images.push_oci_image(registries.source, unique_repo, "v1")
    dest = f"{secure.host}/{unique_repo}"

    untrusted = run_fanout(["copy", image.reference, dest, "--json"], fanout_env())
    assert untrusted.returncode == 1
    (row,) = json.loads(untrusted.stdout)["destinations"]
    assert row["error"]["type"] == "UntrustedCertificate" and row["error"]["transient"] is False
    assert "--ca-bundle" in row["error"]["message"]

    trusted = run_fanout(["copy", image.reference, dest, "--ca-bundle", str(secure.ca_path),
                          "--tag", "v1"], fanout_env())
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    # The registry only speaks TLS: the copy landing proves HTTPS was used on loopback.
    raw, _ = images.get_manifest(secure, f"{unique_repo}:v1")
    assert raw == image.manifest

    from_env = run_fanout(["copy", image.reference, f"{dest}:env"],
                          fanout_env(FANOUT_CA_BUNDLE=str(secure.ca_path)))
    assert from_env.returncode == 0, from_env.stdout + from_env.stderr
    raw, _ = images.get_manifest(secure, f"{unique_repo}:env")
    assert raw == image.manifest


def _copy_in_process(source: str, destination: str, tls: ssl.SSLContext) -> CopyResult:
    async def go() -> CopyResult:
        async with Registries(tls=tls) as registries:
            return await Copier(registries).copy(parse_reference(source),
                                                 parse_repository(destination), ["v1"])

    return asyncio.run(go())


def test_the_trust_store_is_read_only_when_a_host_speaks_tls(
    registries: RegistrySet, unique_repo: str, fresh_registry: Callable[..., RegistryServer],
) -> None:
    # A copy between plain-HTTP registries never reads a CA bundle (registry/tls.py: 15-50 ms of
    # every start-up); the first handshake does, and then verifies with it.
    image = images.push_oci_image(registries.source, unique_repo, "v1")
    plain = TrustOnFirstUse.create()
    result = _copy_in_process(image.reference, f"{registries.dest1.host}/{unique_repo}", plain)
    assert result.error is None and not plain.trust_loaded

    secure = fresh_registry(tls=True)
    assert secure.ca_path is not None
    private = TrustOnFirstUse.create(cafile=str(secure.ca_path))
    result = _copy_in_process(image.reference, f"{secure.host}/{unique_repo}", private)
    assert result.error is None, result.error
    assert private.trust_loaded
    raw, _ = images.get_manifest(secure, f"{unique_repo}:v1")
    assert raw == image.manifest

    public_only = TrustOnFirstUse.create()  # certifi's: the private CA is not in it
    result = _copy_in_process(image.reference, f"{secure.host}/{unique_repo}", public_only)
    assert type(result.error).__name__ == "UntrustedCertificate"
