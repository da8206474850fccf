"""fanout check / producer.api.check: arguments, the table, JSON, exit codes, and nothing contacted
on bad input. The registries are fakes (httpx.MockTransport) behind the real Registries."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import api, check_cmd
from producer.cli import main
from registry.errors import InvalidReference
from registry.preflight import DestinationCheck
from registry.session import Registries
from tests.support.fake_destination import PASSWORD, Destination


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Docker config with ci's password for basic.test, and no FANOUT_ settings."""
    auth = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"basic.test": {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    for name in ("FANOUT_INSECURE_REGISTRIES", "FANOUT_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, docker_config: Path) -> dict[str, Destination]:
    """open.test (anonymous) and basic.test (htpasswd); every other host refuses connections."""
    found = {"open.test": Destination(host="open.test", chunk_min=5 * 1024 * 1024),
             "basic.test": Destination(host="basic.test", auth="basic", exists=True)}

    def handler(request: httpx.Request) -> httpx.Response:
        fake = found.get(request.url.host)
        if fake is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return fake(request)

    def registries(*args: Any, transport: Any = None, **kwargs: Any) -> Registries:
        return Registries(*args, transport=httpx.MockTransport(handler), **kwargs)

    # check_cmd loads the engine when it runs (`fanout --help` does not), so patch it at home.
    monkeypatch.setattr("registry.session.Registries", registries)
    return found


def test_a_table_and_exit_0_when_every_destination_is_ready(
    fakes: dict[str, Destination], capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "open.test/app", "basic.test/team/app:v1"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(check_cmd.COLUMNS)
    assert lines[1].split() == ["open.test/app", "yes", "https", "none", "anonymous", "yes",
                                "yes", "no", "unknown", "yes", "yes", "min", "5.2", "MB"]
    assert lines[2].split()[:8] == ["basic.test/team/app:v1", "yes", "https", "basic",
                                    "accepted", "yes", "yes", "yes"]
    assert lines[-1] == "2 destinations: 2 ready"
    assert "problems:" not in lines


def test_json_and_exit_1_when_any_is_not_ready(
    fakes: dict[str, Destination], capsys: pytest.CaptureFixture[str],
) -> None:
    fakes["basic.test"].push = "denied"

    assert main(["check", "open.test/app", "basic.test/app", "down.test/app", "--json"]) == 1

    out = capsys.readouterr().out
    assert PASSWORD not in out
    document = json.loads(out)
    assert [d["destination"] for d in document] == ["open.test/app", "basic.test/app",
                                                    "down.test/app"]
    assert [d["ready"] for d in document] == [True, False, False]
    assert document[1]["push"] is False and document[1]["credentials"] == "accepted"
    assert "push (write) access" in document[1]["problems"][0]
    assert document[2]["reachable"] is False and "cannot reach" in document[2]["problems"][0]
    assert set(document[0]) >= {"ready", "reachable", "scheme", "auth", "credentials", "push",
                                "repository_exists", "mounts", "referrers_api", "chunk_min",
                                "chunk_max", "whole_blob", "delete", "delete_refusal",
                                "problems"}


def test_problems_follow_the_table(
    fakes: dict[str, Destination], capsys: pytest.CaptureFixture[str],
) -> None:
    fakes["basic.test"].push = "name_unknown"

    assert main(["check", "basic.test/app"]) == 1

    out = capsys.readouterr().out
    assert "problems:\n  basic.test/app: the repository does not exist" in out
    assert out.rstrip().endswith("1 destination: 0 ready, 1 not ready")


@pytest.mark.parametrize(("dest", "message"), [
    ("open.test/App", "repository must be lowercase"),
    ("open.test/app:bad!tag", "tag 'bad!tag' is invalid"),
    ("https://open.test/app", "a reference has no scheme"),
    ("open.test:99999/app", "port '99999'"),
    ("open.test/app@sha256:" + "a" * 64, "has a digest"),
    ("open.test/app:v1", "is given twice"),
])
def test_bad_input_exits_2_and_contacts_nothing(
    fakes: dict[str, Destination], capsys: pytest.CaptureFixture[str], dest: str, message: str,
) -> None:
    assert main(["check", "open.test/app", dest]) == 2

    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert all(not fake.requests for fake in fakes.values())


def test_the_transport_flags_and_environment_of_copy(
    monkeypatch: pytest.MonkeyPatch, docker_config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    seen: dict[str, Any] = {}

    async def fake_check_all(targets: Any, **kwargs: Any) -> list[DestinationCheck]:
        seen.update(kwargs, targets=targets)
        return []

    monkeypatch.setattr(check_cmd, "check_all", fake_check_all)
    monkeypatch.setenv("FANOUT_INSECURE_REGISTRIES", "mirror.internal:5000")

    assert main(["check", "harbor.internal/app", "--insecure-registry", "harbor.internal",
                 "--ca-bundle", "/etc/ssl/corp.pem"]) == 0

    options = seen["options"]
    assert options.insecure_registries == {"harbor.internal", "mirror.internal:5000"}
    assert options.ca_bundle == "/etc/ssl/corp.pem"
    assert [str(t) for t in seen["targets"]] == ["harbor.internal/app"]


def test_the_python_api(docker_config: Path) -> None:
    fake = Destination(host="basic.test", auth="basic")
    env = {"DOCKER_CONFIG": str(docker_config)}

    [check] = api.check(["basic.test/app"], env=env, transport=httpx.MockTransport(fake))

    assert check.ready and check.credentials == "accepted"
    contacted = len(fake.requests)
    with pytest.raises(InvalidReference, match="must be lowercase"):
        api.check(["basic.test/app", "basic.test/App"], env=env,
                  transport=httpx.MockTransport(fake))
    assert len(fake.requests) == contacted


def test_an_unreachable_row_shows_what_is_not_known() -> None:
    check = DestinationCheck(
        destination="down.test/app", registry="down.test", repository="app", ready=False,
        reachable=False, scheme=None, auth=None, token_realm=None, credentials="anonymous",
        pull=None, push=None, repository_exists=None, mounts=None, referrers_api=None,
        whole_blob=None, chunk_min=None, chunk_max=None, problems=("cannot reach down.test",))

    assert check_cmd.row(check) == ("down.test/app", "NO", "-", "-", "anonymous", "-", "-", "-",
                                    "unknown", "-", "-", "-")
    learnt = replace(check, whole_blob=False, chunk_max=4 * 1024 * 1024)
    assert check_cmd.chunk_text(learnt) == "max 4.2 MB, chunks only"
