"""What the profile tests share: each profile as the tests set it up, releases to copy, the real
CLI run against proxies, and checks made on the registry BEHIND a proxy (never through it), so a
proxy quirk cannot hide a defect. The fixtures are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.support import images
from tests.support.checks import assert_same_image
from tests.support.cli import fanout_env, run_fanout, write_docker_auths
from tests.support.images import PushedImage, push_index
from tests.support.oci import fallback_tag
from tests.support.registries import RegistryServer
from tests.support.registry_client import RepoClient
from tests.support.signing import SBOM_TYPE, push_cosign_signature, push_referrers_index

from . import profiles
from .profiles import Profile
from .proxy import QuirkProxy
from .referrers import ReferrersAPI

MiB = 1024 * 1024
# Quick request-tier retries, so a retry costs a fraction of a second; Retry-After still wins.
FAST_ENV = {"FANOUT_REQUEST_ATTEMPTS": "4", "FANOUT_REQUEST_MAX_ELAPSED": "15",
            "FANOUT_CONNECT_TIMEOUT": "3", "FANOUT_READ_TIMEOUT": "30"}
CLI_TIMEOUT_S = 120.0
PLATFORMS = (("linux", "amd64"), ("linux", "arm64"), ("linux", "arm", "v7"))
UPLOADS = r"/blobs/uploads/"

# Every profile as the end-to-end tests meet it: ECR knows acme/app and acme/mirror (a push does
# not create a repository there), Harbor has the project acme, GitLab's tokens die after half a
# second (said to live 60 s), so some die while a copy is under way.
STANDARD: dict[str, Callable[[], Profile]] = {
    "ecr": lambda: profiles.ecr(existing={"acme/app", "acme/mirror"}),
    "ghcr": profiles.ghcr,
    "artifact-registry": profiles.artifact_registry,
    "docker-hub": profiles.docker_hub,
    "quay": profiles.quay,
    "harbor": lambda: profiles.harbor(projects=("acme",)),
    "acr": profiles.acr,
    "gitlab": lambda: profiles.gitlab(lifetime=0.5),
    "artifactory": profiles.artifactory,
    "distribution3": profiles.distribution3,
    "chunk-only": profiles.chunk_only,
}


class StartProxy(Protocol):
    """The ``proxies`` fixture: a started proxy with ``profile`` in front of ``behind`` (a fresh
    registry when None), stopped after the test; returns the registry behind and the proxy."""

    def __call__(self, profile: Profile, behind: RegistryServer | None = None,
                 ) -> tuple[RegistryServer, QuirkProxy]: ...


@dataclass
class Release:
    """An index with a cosign signature (tag) and an SBOM (OCI referrer, in the fallback index
    at a plain registry)."""

    server: RegistryServer
    repo: str
    image: PushedImage
    signature: PushedImage
    sbom: PushedImage

    @property
    def roots(self) -> list[str]:
        return [self.image.digest, self.signature.digest, self.sbom.digest]


def push_multiarch(server: RegistryServer, repo: str, tag: str = "v1", *, shared: int = 0,
                   platforms: Sequence[tuple[str, ...]] = PLATFORMS[:2],
                   docker: bool = False) -> PushedImage:
    """One small image per platform over one ``shared`` base layer (none when 0), then an OCI
    index (whose children are Docker schema 2 manifests when ``docker``)."""
    base = [images.make_layer(shared, docker=docker)] if shared else []
    push = images.push_docker_image if docker else images.push_oci_image
    children = [push(server, repo, None, layers=1, layer_size=2048, platform=p,
                     base_layers=base) for p in platforms]
    return push_index(server, repo, tag, children)


def push_release(server: RegistryServer, repo: str, *, shared: int = 11 * MiB,
                 platforms: Sequence[tuple[str, ...]] = PLATFORMS) -> Release:
    image = push_multiarch(server, repo, shared=shared, platforms=platforms)
    signature = push_cosign_signature(server, repo, image)
    sbom = images.push_artifact(server, repo, image, artifact_type=SBOM_TYPE,
                                blob_media_type=SBOM_TYPE)
    push_referrers_index(server, repo, image.digest, [sbom])
    return Release(server, repo, image, signature, sbom)


# -- running the CLI ------------------------------------------------------------------------------
@dataclass
class CliRun:
    """One ``fanout`` run: its process, its ``--json`` report, the secrets it was given and the
    proxies it went through (whose logs explain a failure)."""

    result: subprocess.CompletedProcess[str]
    report: Any
    secrets: tuple[str, ...]
    proxies: tuple[QuirkProxy, ...] = ()

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    @property
    def why(self) -> str:
        return explain(self, *self.proxies)

    def row(self, destination: str) -> dict[str, Any]:
        """A copy report's row for ``destination``."""
        assert self.report is not None, f"no JSON report:\n{self.output[-3000:]}"
        for row in self.report["destinations"]:
            if row["destination"] == destination:
                return dict(row)
        raise AssertionError(f"no row for {destination} in {self.report['destinations']}")

    def leaked(self) -> list[str]:
        """Configured secrets that appear in the CLI's output (there must be none)."""
        return [s for s in self.secrets if s and s in self.output]

    @contextlib.contextmanager
    def expect(self, returncode: int) -> Iterator[None]:
        """Print what happened (pytest shows it on failure), assert no secret leaked and the exit
        code, then add the explanation to any assertion failing inside."""
        why = self.why
        print(why)
        assert not self.leaked(), f"a password appears in fanout's output{why}"
        assert self.result.returncode == returncode, why
        with explained(why):
            yield


def run_cli(tmp_path: Path, args: Sequence[str], *, proxies: Sequence[QuirkProxy] = (),
            env: Mapping[str, str] | None = None) -> CliRun:
    """``fanout ARGS`` with a Docker config holding each proxy's credentials; the report is
    stdout read as JSON (None when it is not)."""
    credentials = {}
    for proxy in proxies:
        user, password = getattr(proxy.profile, "username", None), getattr(
            proxy.profile, "password", None)
        if user and password:
            credentials[proxy.host] = (user, password)
    config = write_docker_auths(tmp_path / f"docker-{secrets.token_hex(4)}", credentials)
    full_env = fanout_env(config, **FAST_ENV, **(env or {}))
    try:
        result = run_fanout(list(args), full_env, timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        logs = "\n".join(p.log() for p in proxies)
        raise AssertionError(f"fanout {args[0]} did not finish in {CLI_TIMEOUT_S}s\n{logs}") \
            from exc
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return CliRun(result, report, tuple(p for _, p in credentials.values()), tuple(proxies))


def copy(tmp_path: Path, source: str, destinations: Sequence[str], *,
         proxies: Sequence[QuirkProxy] = (), env: Mapping[str, str] | None = None,
         args: Sequence[str] = ()) -> CliRun:
    """``fanout copy SOURCE DEST... --json``, through ``proxies``."""
    return run_cli(tmp_path, ["copy", source, *destinations, "--json", *args], proxies=proxies,
                   env=env)


def check(tmp_path: Path, destinations: Sequence[str], *,
          proxies: Sequence[QuirkProxy] = ()) -> CliRun:
    """``fanout check DEST... --json``, through ``proxies``: the report is a list of rows."""
    return run_cli(tmp_path, ["check", *destinations, "--json"], proxies=proxies)


def explain(run: CliRun, *proxies: QuirkProxy, last: int = 60) -> str:
    """What a failure message needs: the exit code, fanout's errors and the proxies' logs."""
    rows = ""
    if isinstance(run.report, dict):
        rows = "\n".join(f"  {r['destination']}: {r['status']} {r.get('error') or ''}"
                         for r in run.report["destinations"])
    elif isinstance(run.report, list):
        rows = "\n".join(f"  {r['destination']}: ready={r['ready']} {r['problems']}"
                         for r in run.report)
    stderr = run.result.stderr.strip().splitlines()[-15:]
    return (f"\nexit {run.result.returncode}\n{rows}\nstderr tail:\n  " + "\n  ".join(stderr)
            + "\n" + "\n".join(p.log(last) for p in proxies))


# -- checking a destination, behind its proxy ------------------------------------------------------
def assert_release_at(behind: RegistryServer, repo: str, release: Release,
                      proxy: QuirkProxy | None = None, *, api: bool = False,
                      strict_tags: bool = True) -> None:
    """Every manifest and blob of the release is at ``behind/repo``, byte for byte; the tags are
    the source's; the SBOM is findable: in the proxy's referrers API when ``api``, else in the
    fallback index ``sha256-<hex>``, which then is the only extra tag."""
    listing = None
    if api:
        assert proxy is not None
        listing = functools.partial(proxy.behaviour(ReferrersAPI).referrers, repo)
    sig_tag = release.signature.tag or ""
    with RepoClient.at(release.server, release.repo) as src, RepoClient.at(behind, repo) as dst:
        assert_same_image(src, dst, release.roots,
                          tags={"v1": release.image.digest, sig_tag: release.signature.digest},
                          referrers={release.image.digest: [release.sbom]},
                          referrers_api=listing)
        tags = set(dst.tag_list())
    fallback = fallback_tag(release.image.digest)
    wanted = {"v1", sig_tag} if api else {"v1", sig_tag, fallback}
    if api and not strict_tags:
        tags.discard(fallback)
    assert tags == wanted, f"tags at {repo}: {sorted(tags)}, wanted {sorted(wanted)}"


def assert_same_graph(behind: RegistryServer, repo: str, source: RegistryServer,
                      source_repo: str, roots: Iterable[str]) -> None:
    """Every manifest and blob reachable from ``roots`` is at ``behind/repo`` as at the source."""
    with RepoClient.at(source, source_repo) as src, RepoClient.at(behind, repo) as dst:
        assert_same_image(src, dst, roots)


@contextlib.contextmanager
def explained(why: str) -> Iterator[None]:
    """Add ``why`` (``explain(...)``) to any assertion failing inside."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{why}") from None
