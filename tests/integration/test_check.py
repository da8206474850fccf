"""``fanout check`` against real registries: anonymous, htpasswd and token auth, good, wrong and
missing credentials, a pull-only account, TLS with a private CA, and a registry that is down."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support import images
from tests.support.cli import fanout_env, run_fanout, write_docker_config
from tests.support.registries import RegistryServer, RegistrySet


def _check(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]], str]:
    out = run_fanout(["check", *args, "--json"], env, timeout=120)
    assert out.returncode in (0, 1), out.stderr + out.stdout
    return (out.returncode, {row["registry"]: row for row in json.loads(out.stdout)},
            out.stdout + out.stderr)


def _tags_status(server: RegistryServer, repo: str) -> int:
    auth = (server.username, server.password) if server.username and server.password else None
    return httpx.get(f"{server.url}/v2/{repo}/tags/list", auth=auth).status_code


def test_every_auth_kind_with_good_credentials(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    anonymous, basic, token = registries.dest1, registries.basic, registries.token
    env = fanout_env(write_docker_config(tmp_path / "docker", registries.all()))
    dests = [f"{s.host}/{unique_repo}" for s in (anonymous, basic, token)]

    code, rows, _ = _check(dests, env)

    assert code == 0, rows
    for server, auth, credentials in ((anonymous, "none", "anonymous"),
                                      (basic, "basic", "accepted"),
                                      (token, "bearer", "accepted")):
        row = rows[server.host]
        assert row["ready"] is True and row["problems"] == [], row
        assert (row["reachable"], row["scheme"], row["auth"]) == (True, "http", auth)
        assert row["credentials"] == credentials
        assert (row["pull"], row["push"], row["repository_exists"]) == (True, True, False)
        assert row["referrers_api"] is False  # distribution 2.8 has no referrers API
        assert row["mounts"] is None
        assert row["delete"] is True  # a token asked with the delete action, where one is used
    assert rows[token.host]["token_realm"] == "127.0.0.1"
    # The upload was opened and cancelled: the repository still does not exist.
    assert _tags_status(anonymous, unique_repo) == 404

    images.push_oci_image(anonymous, unique_repo, "v1")
    code, rows, _ = _check([f"{anonymous.host}/{unique_repo}:v2"], env)
    assert code == 0 and rows[anonymous.host]["repository_exists"] is True
    assert rows[anonymous.host]["destination"] == f"{anonymous.host}/{unique_repo}:v2"


def test_wrong_and_missing_credentials(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    basic, token = registries.basic, registries.token
    wrong = fanout_env(write_docker_config(tmp_path / "wrong", registries.all(),
                                           wrong_password=[basic.host, token.host]))
    dests = [f"{basic.host}/{unique_repo}", f"{token.host}/{unique_repo}"]

    code, rows, output = _check(dests, wrong)

    assert code == 1
    for server in (basic, token):
        row = rows[server.host]
        assert row["ready"] is False and row["credentials"] == "rejected", row
        assert row["pull"] is False and row["push"] is False
        assert f"docker login {server.host}" in " ".join(row["problems"])
        assert server.password and server.password not in output
    assert "not-the-password" not in output
    assert "token server 127.0.0.1" in rows[token.host]["problems"][0]

    empty = fanout_env(write_docker_config(tmp_path / "empty", []))
    code, rows, _ = _check(dests, empty)
    assert code == 1
    for server in (basic, token):
        row = rows[server.host]
        assert row["credentials"] == "anonymous" and row["push"] is False, row
        assert "none are configured" in row["problems"][0]


def test_an_account_that_may_pull_but_not_push(
    registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    server = registries.token
    assert server.token_server is not None
    reader, password = f"reader-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    server.token_server.add_user(reader, password, actions=("pull",))
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(f"{reader}:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))

    code, rows, output = _check([f"{server.host}/{unique_repo}"], fanout_env(config))

    assert code == 1
    row = rows[server.host]
    assert (row["credentials"], row["pull"], row["push"]) == ("accepted", True, False), row
    [problem] = row["problems"]
    assert "may read" in problem and "push (write) access" in problem
    assert password not in output


def test_tls_with_a_private_ca_a_registry_down_and_the_table(
    unique_repo: str, tmp_path: Path, fresh_registry: Callable[..., RegistryServer],
) -> None:
    secure = fresh_registry(tls=True)
    down = fresh_registry()
    down.stop()
    assert secure.ca_path is not None
    env = fanout_env(write_docker_config(tmp_path / "docker", []))
    dests = [f"{secure.host}/{unique_repo}", f"{down.host}/{unique_repo}"]

    code, rows, _ = _check(dests, env)
    assert code == 1
    assert rows[secure.host]["reachable"] is False
    assert "--ca-bundle" in rows[secure.host]["problems"][0]
    assert rows[down.host]["reachable"] is False
    assert "cannot reach" in rows[down.host]["problems"][0]

    out = run_fanout(["check", *dests, "--ca-bundle", str(secure.ca_path)], env, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["DESTINATION", "READY", "SCHEME"]
    assert lines[1].split()[:5] == [dests[0], "yes", "https", "none", "anonymous"]
    assert lines[2].split()[:3] == [dests[1], "NO", "-"]
    assert any(line.startswith(f"  {dests[1]}: cannot reach") for line in lines)
    assert lines[-1] == "2 destinations: 1 ready, 1 not ready"


def test_bad_input_exits_2(registries: RegistrySet, tmp_path: Path) -> None:
    env = fanout_env(write_docker_config(tmp_path / "docker", []))

    out = run_fanout(["check", f"{registries.dest1.host}/ok", f"{registries.dest1.host}/Bad"],
                     env, timeout=60)

    assert out.returncode == 2 and out.stdout == ""
    assert "repository must be lowercase" in out.stderr
