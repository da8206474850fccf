"""``fanout check`` at every hosted-registry profile and at a plain registry, through the real
CLI with the profile's credentials in a Docker config: ready, with the auth the registry asks
for, where the repository exists; not ready, with the registry's own reason, for an ECR
repository or a Harbor project that does not exist. Nothing is written, so one registry behind
serves every proxy, and one proxy per profile serves the module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.quirks.auth import BasicAuth, BearerAuth
from tests.support.quirks.harness import STANDARD, CliRun, check, push_multiarch
from tests.support.quirks.proxy import QuirkProxy
from tests.support.registries import RegistryServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def behind(plain: RegistryServer) -> RegistryServer:
    """The registry behind every proxy, where ``acme/app`` exists."""
    push_multiarch(plain, "acme/app")
    return plain


@pytest.fixture(scope="module")
def proxy_for(behind: RegistryServer) -> Iterator[Callable[[str], QuirkProxy]]:
    """The module's proxy for a profile of ``STANDARD``, started on first use."""
    started: dict[str, QuirkProxy] = {}

    def get(name: str) -> QuirkProxy:
        if name not in started:
            started[name] = QuirkProxy(behind.url, STANDARD[name]()).start()
        return started[name]

    yield get
    for proxy in started.values():
        proxy.stop()


def _only_row(run: CliRun) -> dict[str, Any]:
    assert isinstance(run.report, list) and len(run.report) == 1, run.output[-3000:]
    return dict(run.report[0])


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_existing_repository_is_ready(
    name: str, proxy_for: Callable[[str], QuirkProxy], tmp_path: Path,
) -> None:
    proxy = proxy_for(name)
    profile = proxy.profile
    auth = next((b.name for b in profile.behaviours if isinstance(b, BasicAuth | BearerAuth)),
                "none")

    run = check(tmp_path, [f"{proxy.host}/acme/app"], proxies=[proxy])

    with run.expect(0):
        row = _only_row(run)
        assert (row["ready"], row["problems"]) == (True, [])
        assert (row["reachable"], row["scheme"], row["auth"]) == (True, "http", auth)
        assert row["credentials"] == ("accepted" if profile.username else "anonymous")
        assert (row["pull"], row["push"], row["repository_exists"]) == (True, True, True)
        assert row["token_realm"] == ("127.0.0.1" if auth == "bearer" else None)
        if name != "harbor":  # Harbor's API answers application/json: the engine's call
            assert row["referrers_api"] is profile.referrers_api
        # Nothing written: an upload was opened and cancelled.
        assert proxy.count("PUT") == proxy.count("PATCH") == 0
        assert proxy.count("DELETE", r"/blobs/uploads/") >= 1


def test_plain_registry_is_ready_anonymously(behind: RegistryServer, tmp_path: Path) -> None:
    run = check(tmp_path, [f"{behind.host}/acme/app"])

    with run.expect(0):
        row = _only_row(run)
        assert (row["ready"], row["problems"]) == (True, [])
        assert (row["auth"], row["credentials"]) == ("none", "anonymous")
        assert (row["pull"], row["push"], row["repository_exists"]) == (True, True, True)


MISSING: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    # ECR creates no repository on push: its NAME_UNKNOWN message, and what to do.
    "ecr-repository": ("ecr", "acme/missing", "basic", (
        "The repository with name 'acme/missing' does not exist in the registry with id "
        "'123456789012'", "create it first")),
    # Harbor refuses a push to a project it does not have with a 401 that names it.
    "harbor-project": ("harbor", "ghost/app", "bearer", ("project ghost not found",)),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_repository_is_not_ready_with_the_registry_reason(
    case: str, proxy_for: Callable[[str], QuirkProxy], tmp_path: Path,
) -> None:
    name, repo, auth, said = MISSING[case]
    proxy = proxy_for(name)

    run = check(tmp_path, [f"{proxy.host}/{repo}"], proxies=[proxy])

    with run.expect(1):
        row = _only_row(run)
        assert (row["ready"], row["auth"], row["credentials"]) == (False, auth, "accepted")
        assert (row["push"], row["repository_exists"]) == (False, False)
        assert any(all(text in problem for text in said) for problem in row["problems"]), (
            f"no problem says {said}")
