"""producer.server_client and the --server path of enqueue/status/retry: requests, error
mapping, retries while waiting, and the token kept out of every message.

The server here is an httpx.MockTransport answering documents of a real (fakeredis) ledger:
it stands in for what a real `fanout serve` will not do on demand (a 502 from a proxy, a reset,
a timeout, a detail echoing the token). tests/integration/test_serve_cli.py runs the real one.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest

from producer import server_client
from producer.cli import main
from producer.server_client import (
    ServerClient,
    ServerError,
    ServerSettings,
    ServerUnreachable,
    server_settings,
    wait,
)
from tests.support.ports import free_port
from workers.ledger import Ledger
from workers.release_document import release_document

TOKEN = "s3cr3t-t0ken-value"
URL = "http://fanout.test"
SOURCE = "src.example/app@sha256:" + "cd" * 32
Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Answers as `fanout serve` does, from a fakeredis ledger; records every request."""

    def __init__(self) -> None:
        self.ledger = Ledger(fakeredis.FakeRedis())
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        # Answers to give first, in order, before answering from the ledger.
        self.script: list[httpx.Response | Exception] = []
        self.on_create: Callable[[str], None] = lambda release_id: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content) if request.content else {}
        self.bodies.append(body)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        path = request.url.path
        if request.method == "POST" and path == "/v1/releases":
            names = body.get("destinations") or ["a.io/app", "b.io/app"]
            release_id = self.ledger.create_release(SOURCE, [(n, ()) for n in names],
                                                    optional=body.get("optional", []))
            self.on_create(release_id)
            return httpx.Response(201, json=self._document(release_id))
        if request.method == "GET" and path == "/v1/releases":
            ids = self.ledger.recent(int(request.url.params["limit"]))
            return httpx.Response(200, json={"releases": [self._document(i) for i in ids]})
        release_id = path.split("/")[3]
        if self.ledger.get(release_id) is None:
            return httpx.Response(404, json={"detail": f"no release {release_id!r}"})
        if path.endswith("/retry"):
            names = body.get("destinations") or ["b.io/app"]
            self.ledger.reset_for_retry(release_id, names)
            return httpx.Response(200, json={"sent": names,
                                             "release": self._document(release_id)})
        return httpx.Response(200, json=self._document(release_id))

    def _document(self, release_id: str) -> dict[str, Any]:
        release = self.ledger.get(release_id)
        assert release is not None
        return release_document(release)

    def finish(self, release_id: str, *, failed: str | None = None) -> None:
        release = self.ledger.get(release_id)
        assert release is not None
        for name in release.destinations:
            self.ledger.mark_running(release_id, name, worker="w1")
            if name == failed:
                self.ledger.mark_failed(release_id, name, error="denied", error_type="Denied")
            else:
                self.ledger.mark_succeeded(release_id, name, stats={"bytes_transferred": 7},
                                           seconds=0.1)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """Every ServerClient the commands make talks to a FakeServer; FANOUT_TOKEN is set."""
    fake = FakeServer()
    real = server_client.ServerClient

    class Mocked(real):  # type: ignore[misc, valid-type]
        def __init__(self, settings: ServerSettings, **kwargs: Any) -> None:
            super().__init__(settings, transport=httpx.MockTransport(fake), **kwargs)

    monkeypatch.setattr(server_client, "ServerClient", Mocked)
    for name in ("FANOUT_SERVER", "FANOUT_DESTINATIONS", "FANOUT_BROKER_URL", "FANOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FANOUT_TOKEN", TOKEN)
    yield fake


def _client(handler: Handler) -> ServerClient:
    return ServerClient(ServerSettings(URL, TOKEN), transport=httpx.MockTransport(handler))


def _no_sleep(seconds: float) -> None:
    pass


# -- settings -----------------------------------------------------------------------------------


def test_the_server_comes_from_the_flag_else_the_environment() -> None:
    env = {"FANOUT_SERVER": "https://env.example/", "FANOUT_TOKEN": f" {TOKEN}\n"}

    assert server_settings(None, {}) is None
    assert server_settings(None, env) == ServerSettings("https://env.example", TOKEN)
    flagged = server_settings("http://flag.example:8080", env)
    assert flagged is not None and flagged.url == "http://flag.example:8080" and flagged.from_flag
    assert TOKEN not in repr(flagged)


@pytest.mark.parametrize(("url", "env", "message"), [
    ("ftp://x.example", {"FANOUT_TOKEN": TOKEN}, "expected an http:// or https:// URL"),
    (f"https://ci:{TOKEN}@x.example", {"FANOUT_TOKEN": TOKEN}, "without user, password or query"),
    (f"https://x.example/?token={TOKEN}", {"FANOUT_TOKEN": TOKEN}, "without user, password"),
    ("https://x.example", {}, "needs a token: set FANOUT_TOKEN"),
    ("https://x.example", {"FANOUT_TOKEN": f"{TOKEN}\nX-Injected: 1"}, "control or a non-ASCII"),
    ("https://x.example", {"FANOUT_TOKEN": f"{TOKEN}é"}, "control or a non-ASCII"),
])
def test_bad_settings_are_usage_errors_that_never_quote_the_token(
    url: str, env: dict[str, str], message: str,
) -> None:
    with pytest.raises(server_client.UsageError, match=message) as caught:
        server_settings(url, env)
    assert TOKEN not in str(caught.value)


def test_a_ca_bundle_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    settings = ServerSettings("https://fanout.test", TOKEN, str(missing))

    with pytest.raises(server_client.UsageError, match=f"FANOUT_CA_BUNDLE: cannot use {missing}"):
        ServerClient(settings)


# -- requests and answers -----------------------------------------------------------------------


def test_a_request_carries_the_token_the_user_agent_and_the_body() -> None:
    fake = FakeServer()

    release = _client(fake).create_release({"source": SOURCE, "to": "release"})

    sent = fake.requests[0]
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["user-agent"] == f"fanout/{metadata.version('fanout')}"
    assert json.loads(sent.content) == {"source": SOURCE, "to": "release"}
    assert release.source == SOURCE and sorted(release.destinations) == ["a.io/app", "b.io/app"]


@pytest.mark.parametrize(("answer", "message", "transient"), [
    (httpx.Response(403, json={"detail": "token 'ci' may not enqueue to set 'prod'"}),
     "the server refused: token 'ci' may not enqueue to set 'prod' (HTTP 403)", False),
    (httpx.Response(401, json={"detail": "no token, or an unknown one"}),
     "the server refused: no token, or an unknown one (HTTP 401)", False),
    # FastAPI's own validation errors: a list of {loc, msg}.
    (httpx.Response(422, json={"detail": [{"loc": ["body", "source"], "msg": "Field required"}]}),
     "the server refused: source: Field required (HTTP 422)", False),
    (httpx.Response(503, json={"detail": "the broker is unreachable; nothing was enqueued"}),
     "the server failed: the broker is unreachable; nothing was enqueued (HTTP 503)", True),
    # Not fanout at all: a proxy's page in the way.
    (httpx.Response(502, text="<html><body>\n<h1>502 Bad Gateway</h1></body></html>"),
     "the server failed: <html><body> <h1>502 Bad Gateway</h1></body></html> (HTTP 502)", True),
    (httpx.Response(308, headers={"Location": "https://fanout.test/v1/releases"}),
     "the server refused: Permanent Redirect (HTTP 308)", False),
])
def test_an_error_answer_becomes_a_server_error_in_the_servers_words(
    answer: httpx.Response, message: str, transient: bool,
) -> None:
    with pytest.raises(ServerError) as caught:
        _client(lambda request: answer).create_release({"source": SOURCE})

    assert str(caught.value) == message
    assert caught.value.status == answer.status_code and caught.value.transient is transient


def test_no_answer_is_server_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ServerUnreachable, match=r"cannot reach the server at http://fanout\.test: "
                                                r"ConnectError: .*Connection refused"):
        _client(refuse).release("rel-1")
    # A POST whose answer never came may still have been recorded: the message says so.
    with pytest.raises(ServerUnreachable, match=r"did not answer in time \(ReadTimeout\) "
                                                r"\(it may have recorded"):
        _client(slow).create_release({"source": SOURCE})


def test_an_answer_that_is_no_release_is_a_clear_error() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "rel-1", "source": SOURCE})

    with pytest.raises(ServerError, match="cannot read: release rel-1: 'digest' is missing"):
        _client(broken).release("rel-1")


def test_the_token_is_in_no_message_repr_or_log_line(caplog: pytest.LogCaptureFixture) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        # A server (or a proxy) that quotes the header it got back.
        return httpx.Response(401, json={"detail": f"bad {request.headers['authorization']}"})

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused, and {request.headers['authorization']}",
                                 request=request)

    caplog.set_level(logging.DEBUG)
    errors = []
    for handler in (echo, refuse):
        client = _client(handler)
        with pytest.raises(ServerError) as caught:
            client.create_release({"source": SOURCE})
        errors.append(caught.value)
        with pytest.raises(ServerError) as caught:
            wait(client, "rel-1", timeout=None, poll=0.01, sleep=_no_sleep, outage=0.0)
        errors.append(caught.value)
        assert TOKEN not in repr(client) and TOKEN not in repr(vars(client))
        assert TOKEN not in repr(vars(client._http.auth))

    assert "bad Bearer ***" in str(errors[0])
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [e.detail for e in errors]
    assert caplog.records and not [t for t in [*texts, caplog.text] if TOKEN in t]


# -- waiting ------------------------------------------------------------------------------------


def test_waiting_rides_out_blips_and_reports_each_poll() -> None:
    fake = FakeServer()
    client = _client(fake)
    release = client.create_release({"source": SOURCE})
    seen: list[str] = []

    def poll_then_finish(release_id: str) -> None:
        seen.append(release_id)
        if len(seen) == 1:  # the server goes away after the first answer, then comes back
            fake.script += [httpx.Response(503, json={"detail": "ledger down"}),
                            httpx.ConnectError("reset"),
                            httpx.Response(502, text="bad gateway")]
            fake.finish(release_id)

    final = wait(client, release.id, timeout=None, poll=0.01, sleep=_no_sleep,
                 on_poll=lambda r: poll_then_finish(r.id))

    assert final.done and final.ok
    assert len(seen) == 2  # an answer, three blips skipped, the final answer


def test_waiting_gives_up_after_an_outage_and_at_once_on_a_refusal() -> None:
    down = _client(lambda request: httpx.Response(503, json={"detail": "ledger down"}))
    gone = _client(lambda request: httpx.Response(404, json={"detail": "no release 'rel-1'"}))

    with pytest.raises(ServerError, match=r"no answer from the server for \d+ s while waiting "
                                          r"for release rel-1: the server failed: ledger down"):
        wait(down, "rel-1", timeout=None, poll=0.01, sleep=_no_sleep, outage=0.0)
    calls = 0

    def count(seconds: float) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(ServerError, match="no release 'rel-1'"):
        wait(gone, "rel-1", timeout=None, poll=0.01, sleep=count)
    assert calls == 0


def test_waiting_returns_the_release_unfinished_when_the_time_is_up() -> None:
    fake = FakeServer()
    client = _client(fake)
    release = client.create_release({"source": SOURCE})

    final = wait(client, release.id, timeout=0, poll=0.01, sleep=_no_sleep)

    assert not final.done and final.id == release.id


# -- the commands -------------------------------------------------------------------------------


def test_enqueue_wait_through_the_server(server: FakeServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    server.on_create = server.finish

    code = main(["enqueue", SOURCE, "--server", URL, "--to", "release", "--tag", "v1",
                 "--optional", "c.io/app", "--no-referrers", "--wait", "--poll", "0.01"])

    out = capsys.readouterr()
    assert code == 0
    assert server.bodies[0] == {"source": SOURCE, "to": "release", "tags": ["v1"],
                                "optional": ["c.io/app"], "referrers": False}
    release_id = out.out.splitlines()[0]
    assert release_id.startswith("rel-") and f"release {release_id}" in out.out
    assert out.out.rstrip().endswith("2 destinations: 2 succeeded")
    assert f"{release_id} a.io/app: succeeded (attempt 1)" in out.err


def test_enqueue_exit_codes_and_json_match_the_broker_path(
    server: FakeServer, capsys: pytest.CaptureFixture[str],
) -> None:
    server.on_create = lambda release_id: server.finish(release_id, failed="b.io/app")

    assert main(["enqueue", SOURCE, "a.io/app", "b.io/app", "--server", URL, "--wait",
                 "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["exit_code"] == 1 and document["destinations"]["b.io/app"]["state"] == "failed"
    assert server.bodies[0]["destinations"] == ["a.io/app", "b.io/app"]

    server.on_create = lambda release_id: None
    assert main(["enqueue", SOURCE, "--server", URL, "--wait", "--timeout", "0"]) == 3
    assert "to" not in server.bodies[-1] and "destinations" not in server.bodies[-1]


def test_enqueue_without_wait_names_the_release_and_how_to_follow(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FANOUT_DESTINATIONS", "a.io/app,b.io/app")
    monkeypatch.setenv("FANOUT_SERVER", URL)

    assert main(["enqueue", SOURCE]) == 0

    out = capsys.readouterr()
    assert out.out.strip().startswith("rel-") and len(out.out.split()) == 1
    assert ("enqueued 1 release(s) to 2 destination(s) from FANOUT_DESTINATIONS; "
            "follow with: fanout status RELEASE --wait\n") in out.err
    assert server.bodies[0]["destinations"] == ["a.io/app", "b.io/app"]


def test_a_refusal_exits_2_with_the_servers_detail(server: FakeServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    server.script.append(httpx.Response(
        403, json={"detail": "token 'ci' may not enqueue to set 'prod'"}))

    assert main(["enqueue", SOURCE, "--server", URL, "--to", "prod", "--wait"]) == 2

    err = capsys.readouterr().err
    assert err == ("fanout enqueue: the server refused: token 'ci' may not enqueue to set "
                   "'prod' (HTTP 403)\n")
    assert server.ledger.recent(10) == []


def test_stdin_is_one_post_per_reference_and_a_refusal_names_those_before_it(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{SOURCE}\nsrc.example/app:v2\n"))
    server.on_create = lambda release_id: server.script.append(
        httpx.Response(422, json={"detail": "source src.example/app:v2: no such image"}))

    assert main(["enqueue", "-", "--server", URL, "--to", "release"]) == 2

    out = capsys.readouterr()
    [first] = server.ledger.recent(10)
    assert out.out.split() == [first]
    assert [b["source"] for b in server.bodies] == [SOURCE, "src.example/app:v2"]
    assert "no such image (HTTP 422) (1 release(s) enqueued before it" in out.err


@pytest.mark.parametrize("argv", [
    ["enqueue", SOURCE, "--broker", "redis://x:6379/0"],
    ["enqueue", SOURCE, "--config", "fanout.toml"],
    ["enqueue", SOURCE, "--referrers-type", "application/spdx+json"],
    ["enqueue", SOURCE, "a.io/app", "--to", "release"],
    ["enqueue", "not a reference"],
    ["retry", "rel-1", "--broker", "redis://x:6379/0"],
])
def test_bad_input_sends_nothing(server: FakeServer, argv: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--server", URL]) == 2
    assert capsys.readouterr().err.startswith(f"fanout {argv[0]}: ")
    assert server.requests == []


def test_an_unreachable_server_exits_2(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens there: a real refused connection, no mock.
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FANOUT_TOKEN", TOKEN)

    assert main(["enqueue", SOURCE, "--server", url, "--to", "release"]) == 2
    assert main(["status", "rel-1", "--server", url]) == 2

    err = capsys.readouterr().err
    assert f"fanout enqueue: cannot reach the server at {url}: ConnectError" in err
    assert f"fanout status: cannot reach the server at {url}: ConnectError" in err
    assert TOKEN not in err


def test_status_through_the_server(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    first = server.ledger.create_release(SOURCE, [("a.io/app", ())])
    server.finish(first)
    second = server.ledger.create_release(SOURCE, [("a.io/app", ()), ("b.io/app", ())])

    assert main(["status", first, "--server", URL]) == 0
    assert f"release {first}" in capsys.readouterr().out
    assert main(["status", second, "--server", URL, "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["exit_code"] == 3
    assert main(["status", "--server", URL, "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in lines} == {first, second}
    assert server.requests[-1].url.params["limit"] == "5"
    assert main(["status", "rel-nope", "--server", URL]) == 2
    assert "the server refused: no release 'rel-nope' (HTTP 404)" in capsys.readouterr().err


def test_retry_through_the_server(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    release_id = server.ledger.create_release(SOURCE, [("a.io/app", ()), ("b.io/app", ())])
    server.finish(release_id, failed="b.io/app")
    server.on_create = lambda rid: None

    assert main(["retry", release_id, "--dest", "b.io/app", "--server", URL]) == 0

    assert server.bodies[-1] == {"destinations": ["b.io/app"]}
    assert f"{release_id}: sent again 1 destination(s): b.io/app" in capsys.readouterr().err
    state = server.ledger.get(release_id)
    assert state is not None and state.destinations["b.io/app"].state == "queued"
