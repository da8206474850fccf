"""FANOUT_ALLOWED_SOURCES / FANOUT_ALLOWED_DESTINATIONS: a task outside them fails for good with
PolicyDenied, and the copy engine is never asked (no request to any registry)."""

from __future__ import annotations

from typing import Any

import pytest

from registry.envconfig import ConfigError
from workers import engine as engine_module
from workers.access import AccessPolicy, PolicyDenied
from workers.engine import CopyEngine
from workers.job import CopyJob
from workers.runner import describe

DIGEST = "sha256:" + "e" * 64


def job(source: str = f"ghcr.io/acme/app@{DIGEST}",
        destination: str = "registry.corp/mirror/app") -> CopyJob:
    return CopyJob("rel-1", source, destination, DIGEST, ("v1",), referrers=False,
                   referrer_types=())


POLICY = AccessPolicy.from_env({
    "FANOUT_ALLOWED_SOURCES": "ghcr.io/acme/*, docker.io/library/*",
    "FANOUT_ALLOWED_DESTINATIONS": "registry.corp/mirror/*",
})


def test_inside_the_patterns_passes() -> None:
    POLICY.check(job())
    POLICY.check(job(source=f"ubuntu@{DIGEST}"))  # docker.io/library/ubuntu, canonically


@pytest.mark.parametrize(("kind", "found"), [
    ("destination", job(destination="ghcr.io/evil/app")),
    # A prefix of the host is not the host.
    ("destination", job(destination="registry.corp.evil.example/mirror/app")),
    ("source", job(source=f"ghcr.io/acme-evil/app@{DIGEST}")),
    ("source", job(source=f"quay.io/acme/app@{DIGEST}")),
])
def test_outside_the_patterns_is_denied_for_good(kind: str, found: CopyJob) -> None:
    with pytest.raises(PolicyDenied, match=f"{kind} .* is not allowed") as caught:
        POLICY.check(found)
    assert not caught.value.transient
    assert describe(caught.value)[1] == "PolicyDenied"


def test_no_patterns_allow_anything() -> None:
    AccessPolicy.from_env({}).check(job(destination="anywhere.example/x"))


def test_a_bare_host_pattern_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"FANOUT_ALLOWED_DESTINATIONS.*'ghcr\.io/\*'"):
        AccessPolicy.from_env({"FANOUT_ALLOWED_DESTINATIONS": "ghcr.io"})


def test_the_engine_refuses_before_building_any_client(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(args)

    monkeypatch.setattr(engine_module, "Copier", Recorder)
    monkeypatch.setattr(engine_module, "Registries", Recorder)
    engine = CopyEngine({"HOME": "/nonexistent",
                         "FANOUT_ALLOWED_DESTINATIONS": "registry.corp/mirror/*"})
    with pytest.raises(PolicyDenied):
        engine.copy(job(destination="ghcr.io/evil/app"), timeout=5)
    assert built == []  # no pool, no copier: nothing could have been sent
