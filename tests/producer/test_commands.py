"""fanout enqueue / fanout status: argument handling, output and exit codes."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer import api
from producer.cli import main
from producer.enqueue_cmd import read_sources
from workers.ledger import Ledger

DIGEST = "sha256:" + "cd" * 32
SOURCE = f"src.example/app@{DIGEST}"


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    ledger = Ledger(fakeredis.FakeRedis())
    monkeypatch.setattr(api, "connect_ledger", lambda settings: ledger)
    return ledger


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch, ledger: Ledger) -> list[dict[str, Any]]:
    """Replaces api.enqueue: records its arguments and creates releases that succeed at once."""
    calls: list[dict[str, Any]] = []

    def fake(sources: list[str], destinations: list[str], **kwargs: Any) -> list[str]:
        calls.append({"sources": sources, "destinations": destinations, **kwargs})
        ids = []
        for _ in sources:
            release_id = ledger.create_release(SOURCE, [(d, ()) for d in destinations])
            for d in destinations:
                ledger.mark_running(release_id, d, worker="w")
                ledger.mark_succeeded(release_id, d, stats={"bytes_transferred": 10}, seconds=0.5)
            ids.append(release_id)
        return ids

    monkeypatch.setattr(api, "enqueue", fake)
    return calls


def test_sources_from_a_stream() -> None:
    text = "# built by ko\nghcr.io/a/one@" + DIGEST + "\n\n  ghcr.io/a/two:v1  # tagged\n"

    assert read_sources(io.StringIO(text)) == [f"ghcr.io/a/one@{DIGEST}", "ghcr.io/a/two:v1"]
    with pytest.raises(Exception, match="line 2: expected one image reference"):
        read_sources(io.StringIO("a.io/x\na.io/y a.io/z\n"))


def test_enqueue_prints_ids_and_reads_destinations_from_env(
    enqueued: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FANOUT_DESTINATIONS", "a.io/app,b.io/app")

    assert main(["enqueue", "src.example/app:v1", "--tag", "1.0"]) == 0

    out = capsys.readouterr()
    assert out.out.strip().startswith("rel-") and len(out.out.split()) == 1
    assert "from FANOUT_DESTINATIONS" in out.err
    assert enqueued[0]["destinations"] == ["a.io/app", "b.io/app"]
    assert enqueued[0]["tags"] == ["1.0"] and enqueued[0]["referrers"] is True


def test_enqueue_stdin_with_a_config_set_and_wait(
    enqueued: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "fanout.toml"
    config.write_text('[destinations]\nprod = ["a.io/app", "b.io/app"]\n'
                      '[registries."a.io"]\ninsecure = true\n')
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{SOURCE}\n# two\nsrc.example/app:v2\n"))
    monkeypatch.delenv("FANOUT_DESTINATIONS", raising=False)

    code = main(["enqueue", "-", "--to", "prod", "--config", str(config), "--wait", "--json"])

    assert code == 0
    call = enqueued[0]
    assert call["sources"] == [SOURCE, "src.example/app:v2"]
    assert call["insecure_registries"] == ["a.io"]
    document = json.loads(capsys.readouterr().out)
    assert [r["exit_code"] for r in document["releases"]] == [0, 0]
    assert all(r["destinations"]["b.io/app"]["state"] == "succeeded"
               for r in document["releases"])


def test_enqueue_without_destinations_is_a_usage_error(
    enqueued: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("FANOUT_DESTINATIONS", raising=False)
    monkeypatch.delenv("FANOUT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    assert main(["enqueue", SOURCE]) == 2
    assert "no destinations" in capsys.readouterr().err
    assert enqueued == []


@pytest.mark.parametrize(("args", "named"), [
    (["oci:/data/layout:1.0", "a.io/app"], "oci:/data/layout:1.0"),
    ([SOURCE, "oci-archive:/media/usb/app.tar"], "oci-archive:/media/usb/app.tar"),
    ([SOURCE, "a.io/app", "--optional", "oci:/data/layout"], "oci:/data/layout"),
])
def test_enqueue_refuses_layouts_and_points_to_fanout_copy(
    enqueued: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], args: list[str],
    named: str,
) -> None:
    # A worker, on another machine, has no business reading or writing this one's files.
    assert main(["enqueue", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "copy to or from an OCI layout or archive with fanout copy" in err
    assert enqueued == []


def test_timeout_needs_wait(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "rel-x", "--timeout", "3"]) == 2
    assert "--timeout needs --wait" in capsys.readouterr().err


def test_status_table_json_and_exit_codes(ledger: Ledger,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    release_id = ledger.create_release(SOURCE, [("a.io/app", ("v1",)), ("b.io/app", ())])
    ledger.mark_running(release_id, "a.io/app", worker="w1")
    ledger.mark_succeeded(release_id, "a.io/app", stats={"bytes_transferred": 5}, seconds=0.2)

    assert main(["status", release_id]) == 3  # b is still queued
    table = capsys.readouterr().out
    assert f"release {release_id}" in table and "2 destinations: 1 succeeded, 1 queued" in table

    assert main(["status", release_id, "--wait", "--timeout", "0.1", "--poll", "0.02"]) == 3
    capsys.readouterr()

    ledger.mark_running(release_id, "b.io/app", worker="w2")
    ledger.mark_failed(release_id, "b.io/app", error="access denied", error_type="Denied")
    assert main(["status", release_id, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["exit_code"] == 1 and document["done"] is True
    assert document["destinations"]["b.io/app"]["last_error"] == "access denied"
    assert document["destinations"]["a.io/app"]["attempts"] == 1


def test_status_of_an_unknown_release(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "rel-unknown"]) == 2
    assert "no release 'rel-unknown'" in capsys.readouterr().err


def test_status_without_a_release_lists_the_newest(ledger: Ledger,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    assert capsys.readouterr().out.strip() == "no releases in the ledger"
    first = ledger.create_release(SOURCE, [("a.example/app", ())])
    time.sleep(0.01)  # ids and order are by creation time, in milliseconds
    second = ledger.create_release(SOURCE, [("a.example/app", ()), ("b.example/app", ())])
    ledger.mark_running(second, "a.example/app", worker="w")
    ledger.mark_failed(second, "a.example/app", error="denied", error_type="Denied")
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [second, first]
    assert "1 failed, 1 queued" in lines[0] and "1 queued" in lines[1]
    assert main(["status", "--limit", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in document["releases"]] == [second]
    assert main(["status", "--wait"]) == 2
    assert "--wait needs a RELEASE" in capsys.readouterr().err


# -- optional destinations, history, retry, replay ---------------------------------------------


def test_enqueue_passes_optional_destinations_from_flags_and_the_set(
    enqueued: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "fanout.toml"
    config.write_text('[destinations]\nprod = ["a.io/app", { to = "b.io/app", optional = true }]\n')

    assert main(["enqueue", SOURCE, "--to", "prod", "--config", str(config),
                 "--optional", "c.io/app"]) == 0

    assert enqueued[0]["destinations"] == ["a.io/app", "b.io/app"]
    assert sorted(enqueued[0]["optional"]) == ["b.io/app", "c.io/app"]
    assert "and 1 optional" in capsys.readouterr().err


def test_status_shows_optional_destinations_and_every_attempt(
    ledger: Ledger, capsys: pytest.CaptureFixture[str],
) -> None:
    release_id = ledger.create_release(SOURCE, [("a.io/app", ("v1",)), ("b.io/app", ())],
                                       optional=["b.io/app"])
    ledger.mark_running(release_id, "a.io/app", worker="w1@h")
    ledger.mark_failed(release_id, "a.io/app", error="wrong password", error_type="Unauthorized")
    ledger.reset_for_retry(release_id, ["a.io/app"])
    ledger.mark_running(release_id, "a.io/app", worker="w2@h")
    ledger.mark_succeeded(release_id, "a.io/app", stats={"bytes_transferred": 5}, seconds=0.2)
    ledger.mark_running(release_id, "b.io/app", worker="w1@h")
    ledger.mark_failed(release_id, "b.io/app", error="denied", error_type="Denied")

    assert main(["status", release_id]) == 0  # the optional one's failure fails nothing
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("a.io/app "))
    assert "#1  w1@h" in lines[row + 1] and "failed  Unauthorized: wrong password" in lines[row + 1]
    assert lines[row + 2].strip().startswith("-- retried at")
    assert "#2  w2@h" in lines[row + 3] and lines[row + 3].endswith("succeeded")
    assert any(line.startswith("b.io/app (optional)  failed") for line in lines)
    assert lines[-1] == "2 destinations (1 optional): 1 succeeded, 1 failed"

    assert main(["status", release_id, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True and document["exit_code"] == 0
    assert document["destinations"]["b.io/app"]["optional"] is True
    history = document["destinations"]["a.io/app"]["history"]
    assert [(h["attempt"], h["worker"], h["outcome"]) for h in history] == [
        (1, "w1@h", "failed"), (2, "w2@h", "succeeded")]
    assert history[0]["error"] == "wrong password" and history[0]["ended_at"] > 0


def test_retry_command(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    release_id = ledger.create_release(SOURCE, [("a.io/app", ()), ("b.io/app", ())])
    ledger.mark_running(release_id, "a.io/app", worker="w")
    ledger.mark_succeeded(release_id, "a.io/app", stats={}, seconds=0.1)

    assert main(["retry", "rel-unknown", "--broker", "memory://"]) == 2
    assert "no release 'rel-unknown'" in capsys.readouterr().err
    assert main(["retry", release_id, "--dest", "c.io/app", "--broker", "memory://"]) == 2
    assert "'c.io/app' is not in release" in capsys.readouterr().err
    assert main(["retry", release_id, "--dest", "b.io/app", "--broker", "memory://"]) == 2
    err = capsys.readouterr().err
    assert f"destination b.io/app of release {release_id} is queued" in err
    assert main(["retry", release_id, "--broker", "memory://"]) == 3  # b still queued
    assert "nothing to retry" in capsys.readouterr().err

    ledger.mark_running(release_id, "b.io/app", worker="w")
    ledger.mark_failed(release_id, "b.io/app", error="denied", error_type="Denied")
    assert main(["retry", release_id, "--broker", "memory://", "--wait", "--timeout", "0.1",
                 "--poll", "0.02", "--json"]) == 3  # sent again; no worker here to take it
    out = capsys.readouterr()
    assert "sent again 1 destination(s): b.io/app" in out.err
    document = json.loads(out.out)
    assert document["destinations"]["b.io/app"]["state"] == "queued"
    assert document["destinations"]["b.io/app"]["generation"] == 1
    assert main(["retry", release_id, "--broker", "memory://"]) == 3  # queued: nothing to send
    capsys.readouterr()


def test_replay_command_checks_its_input(ledger: Ledger,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--since", "7x", "m.io/app"]) == 2
    assert "bad duration '7x'" in capsys.readouterr().err
    assert main(["replay", "--since", "0s", "m.io/app"]) == 2
    assert "more than zero" in capsys.readouterr().err
    assert main(["replay", "--since", "7d"]) == 2
    assert "no destinations to replay to" in capsys.readouterr().err
    assert main(["replay", "--since", "7d", "m.io/app", "--wait"]) == 0
    assert "nothing to replay" in capsys.readouterr().err


def test_replay_command_waits_for_every_release(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[dict[str, Any]] = []

    def fake(since: float, destinations: list[str], **kwargs: Any) -> list[str]:
        calls.append({"since": since, "destinations": destinations, **kwargs})
        ids = []
        for state in ("succeeded", "failed"):
            release_id = ledger.create_release(SOURCE, [(d, ()) for d in destinations])
            for d in destinations:
                ledger.mark_running(release_id, d, worker="w")
                if state == "failed":
                    ledger.mark_failed(release_id, d, error="denied", error_type="Denied")
                else:
                    ledger.mark_succeeded(release_id, d, stats={}, seconds=0.1)
            ids.append(release_id)
        return ids

    monkeypatch.setattr(api, "replay", fake)
    config = tmp_path / "fanout.toml"
    config.write_text('[destinations]\nmirrors = ["m.io/app", { to = "n.io/app", '
                      'optional = true }]\n')

    code = main(["replay", "--since", "1h30m", "--to", "mirrors", "--config", str(config),
                 "--source-repo", "src.example/app", "--wait", "--json"])

    assert code == 1
    assert calls[0]["since"] == 5400.0 and calls[0]["source_repo"] == "src.example/app"
    assert calls[0]["destinations"] == ["m.io/app", "n.io/app"]
    assert calls[0]["optional"] == ["n.io/app"]
    document = json.loads(capsys.readouterr().out)
    assert [r["exit_code"] for r in document["releases"]] == [0, 1]
