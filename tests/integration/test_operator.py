"""What an operator does after a release: retry what failed, replay to a new mirror, and let
an optional destination fail, with a real Redis, a real `celery worker` and real registries.

Everything goes through the `fanout` command, as an operator would type it; results are read
back from the registries themselves.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from producer import api
from tests.support import images
from tests.support.cli import run_fanout, write_docker_config
from tests.support.queue import Process, RedisServer, ledger_for, queue_env, start_worker
from tests.support.queue import wait_until as poll_until
from tests.support.registries import RegistrySet
from workers.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Operator:
    """A Redis, one worker and the environment they and the `fanout` command share."""

    env: dict[str, str]
    docker: Path
    registries: RegistrySet
    worker: Process

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.env["FANOUT_BROKER_URL"])

    def fanout(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_fanout(list(args), self.env, timeout=60)

    def credentials(self, *, right: bool) -> None:
        """The Docker config the worker (and `fanout copy`) reads at every copy."""
        basic = self.registries.basic
        write_docker_config(self.docker, [basic], wrong_password=() if right else [basic.host])


@pytest.fixture(scope="module")
def operator(registries: RegistrySet,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    tmp = tmp_path_factory.mktemp("operator")
    server = RedisServer(tmp / "redis", persistent=False).start()
    docker = write_docker_config(tmp / "docker", [registries.basic],
                                 wrong_password=[registries.basic.host])
    env = queue_env(f"{server.url}/0", docker)
    try:
        worker = start_worker("op1", env, tmp, loglevel="INFO")
        try:
            yield Operator(env, docker, registries, worker)
        finally:
            worker.stop()
    finally:
        server.stop()


def _document(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(done.stdout)
        return document
    except ValueError:
        raise AssertionError(f"not JSON:\n{done.stdout}\n{done.stderr}") from None


def test_a_release_failed_for_bad_credentials_is_retried_once_they_are_fixed(
    operator: Operator, unique_repo: str,
) -> None:
    regs = operator.registries
    operator.credentials(right=False)
    image = images.push_oci_image(regs.source, unique_repo, "v1", layers=1)
    good, denied = f"{regs.dest1.host}/{unique_repo}", f"{regs.basic.host}/{unique_repo}"

    first = operator.fanout("enqueue", f"{regs.source.host}/{unique_repo}:v1", good, denied,
                            "--wait", "--timeout", "30", "--json")

    assert first.returncode == 1, first.stderr
    release_id = _document(first)["id"]
    assert _document(first)["destinations"][denied]["error_type"] == "Unauthorized"
    # bad input: nothing is sent
    unknown = operator.fanout("retry", "rel-nope")
    assert unknown.returncode == 2 and "no release 'rel-nope'" in unknown.stderr
    stranger = operator.fanout("retry", release_id, "--dest", f"{regs.dest2.host}/{unique_repo}")
    assert stranger.returncode == 2
    assert f"'{regs.dest2.host}/{unique_repo}' is not in release {release_id}" in stranger.stderr

    operator.credentials(right=True)
    retried = operator.fanout("retry", release_id, "--wait", "--timeout", "30", "--json")

    assert retried.returncode == 0, retried.stderr
    assert f"sent again 1 destination(s): {denied}" in retried.stderr
    records = _document(retried)["destinations"]
    assert records[denied]["state"] == "succeeded" and records[denied]["attempts"] == 2
    assert [(h["attempt"], h["outcome"], h["error_type"]) for h in records[denied]["history"]] \
        == [(1, "failed", "Unauthorized"), (2, "succeeded", None)]
    assert all(h["worker"].startswith("op1@") for h in records[denied]["history"])
    assert [h["outcome"] for h in records[good]["history"]] == ["succeeded"]  # not sent again
    assert images.manifest_exists(regs.basic, f"{unique_repo}@{image.digest}")
    assert images.manifest_exists(regs.basic, f"{unique_repo}:v1")
    table = operator.fanout("status", release_id)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(denied))
    assert "#1  op1@" in lines[row + 1] and "failed  Unauthorized" in lines[row + 1]
    assert "-- retried at" in lines[row + 2] and lines[row + 3].endswith("succeeded")
    assert "not-the-password" not in table.stdout + retried.stdout + first.stdout


def test_replay_brings_earlier_releases_to_a_new_mirror(
    operator: Operator, unique_repo: str,
) -> None:
    regs = operator.registries
    one = images.push_oci_image(regs.source, unique_repo, "v1", layers=1)
    two = images.push_oci_image(regs.source, unique_repo, "v2", layers=1)
    elsewhere = f"{regs.dest1.host}/{unique_repo}"
    env, ledger = operator.env, operator.ledger
    ids = [*api.enqueue(f"{regs.source.host}/{unique_repo}:v1", [elsewhere], env=env,
                        ledger=ledger),
           *api.enqueue(one.reference, [elsewhere], tags=["stable"], env=env, ledger=ledger),
           *api.enqueue(f"{regs.source.host}/{unique_repo}:v2", [elsewhere], env=env,
                        ledger=ledger)]
    for release_id in ids:
        assert api.wait(release_id, timeout=30, ledger=ledger).ok
    mirror = f"{unique_repo}-mirror"

    bad = operator.fanout("replay", "--since", "5 minutes", f"{regs.dest2.host}/{mirror}")
    assert bad.returncode == 2 and "bad duration '5 minutes'" in bad.stderr
    done = operator.fanout("replay", "--since", "10m", f"{regs.dest2.host}/{mirror}",
                           "--source-repo", f"{regs.source.host}/{unique_repo}",
                           "--wait", "--timeout", "30", "--json")

    assert done.returncode == 0, done.stderr
    releases = _document(done)["releases"]
    assert [r["digest"] for r in releases] == [one.digest, two.digest]
    assert all(r["exit_code"] == 0 for r in releases)
    assert images.manifest_exists(regs.dest2, f"{mirror}@{one.digest}")
    assert images.manifest_exists(regs.dest2, f"{mirror}@{two.digest}")
    assert sorted(images.list_tags(regs.dest2, mirror)) == ["stable", "v1", "v2"]
    assert images.get_manifest(regs.dest2, f"{mirror}:stable")[0] == one.manifest
    assert images.get_manifest(regs.dest2, f"{mirror}:v2")[0] == two.manifest


def test_an_optional_destination_fails_without_failing_the_release(
    operator: Operator, unique_repo: str,
) -> None:
    regs = operator.registries
    operator.credentials(right=False)
    images.push_oci_image(regs.source, unique_repo, "v1", layers=1)
    source = f"{regs.source.host}/{unique_repo}:v1"
    required, optional = f"{regs.dest1.host}/{unique_repo}", f"{regs.basic.host}/{unique_repo}"

    done = operator.fanout("enqueue", source, required, "--optional", optional,
                           "--wait", "--timeout", "30", "--json")

    assert done.returncode == 0, done.stderr
    release_id = _document(done)["id"]
    ledger = operator.ledger
    poll_until(lambda: ledger.record(release_id, optional).done,  # type: ignore[union-attr]
               30, "the optional destination finished")
    status = operator.fanout("status", release_id, "--json")
    assert status.returncode == 0, status.stderr
    document = _document(status)
    assert document["ok"] is True and document["exit_code"] == 0
    assert document["destinations"][optional]["optional"] is True
    assert document["destinations"][optional]["state"] == "failed"
    assert document["destinations"][required]["optional"] is False
    table = operator.fanout("status", release_id)
    assert table.returncode == 0
    assert any(line.startswith(f"{optional} (optional)  failed")
               for line in table.stdout.splitlines())

    copied = operator.fanout("copy", source, f"{regs.dest2.host}/{unique_repo}",
                             "--optional", optional, "--json")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    results = {d["destination"]: d for d in _document(copied)["destinations"]}
    assert results[optional]["status"] == "failed" and results[optional]["optional"] is True
    assert _document(copied)["ok"] is True
