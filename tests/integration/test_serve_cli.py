"""`fanout enqueue/status/retry --server` for real: the CLI as a subprocess (as a hosted CI runner
runs it), a real `fanout serve`, Redis, a `celery worker` and registries.

The CLI gets no broker URL and a decoy fanout.toml whose sets point nowhere: everything it does
must go through the server, whose own fanout.toml names the sets and grants the token.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import images
from tests.support.cli import fanout_env, run_fanout, write_docker_config
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    messages_in_broker,
    queue_env,
    start_worker,
)
from tests.support.registries import RegistrySet
from tests.support.serve import Served, serving, token_toml
from workers.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

CI_TOKEN = "ci-cli-token-3f9e1b7c"
REPO = "servecli/app"


@dataclass
class Setup:
    served: Served
    broker_url: str
    registries: RegistrySet
    worker: Process
    cli_env: dict[str, str]

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.broker_url)

    def fanout(self, *args: str, token: str = CI_TOKEN,
               **env: str) -> subprocess.CompletedProcess[str]:
        result = run_fanout(list(args), {**self.cli_env, "FANOUT_TOKEN": token, **env},
                            timeout=120)
        # Whatever the outcome, the token is in none of what the command printed.
        assert token not in result.stdout and token not in result.stderr
        return result


@pytest.fixture(scope="module")
def setup(registries: RegistrySet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("serve-cli")
    redis = RedisServer(tmp / "redis", persistent=False).start()
    broker_url = f"{redis.url}/0"
    env = queue_env(broker_url, write_docker_config(tmp / "docker", []))
    config = (
        "[destinations]\n"
        f'release = ["{registries.dest1.host}/{REPO}", "{registries.dest2.host}/{REPO}:stable"]\n'
        f'other = ["{registries.dest2.host}/elsewhere"]\n'
        + token_toml("ci", CI_TOKEN, ["release"], [f"{registries.source.host}/servecli/*"]))
    decoy = tmp / "decoy.toml"
    decoy.write_text('[destinations]\nrelease = ["nowhere.invalid/app"]\n'
                     'other = ["nowhere.invalid/app"]\n')
    cli_env = fanout_env(tmp / "no-docker-config", FANOUT_CONFIG=str(decoy))
    try:
        worker = start_worker("servecli1", env, tmp)
        try:
            with serving(tmp / "serve", config, env=env) as served:
                yield Setup(served, broker_url, registries, worker, cli_env)
        finally:
            worker.stop()
    finally:
        redis.stop()


def test_enqueue_over_http_waits_until_every_destination_has_the_image(setup: Setup) -> None:
    regs = setup.registries
    image = images.push_oci_image(regs.source, REPO, "v1", layers=2)

    done = setup.fanout("enqueue", f"{regs.source.host}/{REPO}:v1", "--server", setup.served.url,
                        "--to", "release", "--tag", "1.0.0", "--wait", "--timeout", "90")

    assert done.returncode == 0, done.stderr
    release_id = done.stdout.splitlines()[0]
    assert release_id.startswith("rel-")
    assert f"release {release_id}  source {regs.source.host}/{REPO}@{image.digest}" in done.stdout
    assert done.stdout.rstrip().endswith("2 destinations: 2 succeeded")
    assert f"{release_id} {regs.dest1.host}/{REPO}: succeeded" in done.stderr
    for host, tag in ((regs.dest1, "1.0.0"), (regs.dest2, "stable")):
        assert images.manifest_exists(host, f"{REPO}@{image.digest}")
        assert images.manifest_exists(host, f"{REPO}:{tag}")

    # status and retry, the server named by FANOUT_SERVER this time.
    one = setup.fanout("status", release_id, FANOUT_SERVER=setup.served.url)
    recent = setup.fanout("status", "--limit", "5", FANOUT_SERVER=setup.served.url)
    retried = setup.fanout("retry", release_id, FANOUT_SERVER=setup.served.url)
    assert one.returncode == 0, one.stderr
    assert f"release {release_id}" in one.stdout and "2 succeeded" in one.stdout
    assert recent.returncode == 0 and recent.stdout.split()[0] == release_id
    assert retried.returncode == 0, retried.stderr
    assert f"{release_id}: nothing to retry" in retried.stderr
    assert CI_TOKEN not in setup.served.log()


def test_a_bad_token_exits_2_and_enqueues_nothing(setup: Setup) -> None:
    regs = setup.registries
    images.push_oci_image(regs.source, REPO, "v2", layers=1)
    before = setup.ledger.recent(1000)

    refused = setup.fanout("enqueue", f"{regs.source.host}/{REPO}:v2", "--server",
                           setup.served.url, "--to", "release", "--wait", token="not-the-token")

    assert refused.returncode == 2
    assert refused.stderr.startswith("fanout enqueue: the server refused: ")
    assert refused.stderr.rstrip().endswith("(HTTP 401)")
    assert refused.stdout == ""
    assert setup.ledger.recent(1000) == before
    assert messages_in_broker(setup.broker_url) == 0


def test_a_set_outside_the_tokens_grants_exits_2_with_the_servers_detail(setup: Setup) -> None:
    regs = setup.registries
    images.push_oci_image(regs.source, REPO, "v3", layers=1)
    before = setup.ledger.recent(1000)

    refused = setup.fanout("enqueue", f"{regs.source.host}/{REPO}:v3", "--server",
                           setup.served.url, "--to", "other", "--wait")

    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith("fanout enqueue: the server refused: ")
    assert "may not enqueue to set 'other'" in line and line.endswith("(HTTP 403)")
    assert setup.ledger.recent(1000) == before
    assert messages_in_broker(setup.broker_url) == 0
