"""The release page in-process: who may read it, what it shows, and that what the ledger holds
(chosen by whoever pushes or enqueues) is only ever text. The page in a real browser, updating
live, is tests/integration/test_release_page.py."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib.resources import files

import fakeredis
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import ServeConfig
from tests.service.conftest import CI_TOKEN, READER_TOKEN, SOURCE, bearer
from workers.ledger import Ledger
from workers.records import release_key

HOSTILE_ERROR = "<script>alert(1)</script>"
HOSTILE_NAME = 'evil.example/app"><img src=x onerror=alert(2)>'
HOSTILE_SOURCE = "registry.corp/x</span><script>alert(3)</script>@sha256:" + "b" * 64


def basic(token: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find(self, tag: str, **attrs: str) -> list[Element]:
        found = [c for c in self.children
                 if c.tag == tag and all(c.attrs.get(k) == v for k, v in attrs.items())]
        return found + [f for c in self.children for f in c.find(tag, **attrs)]

    def cell(self, css_class: str) -> str:
        [cell] = [c for c in self.find("td") + self.find("span") + self.find("code")
                  if c.attrs.get("class") == css_class]
        return cell.all_text()

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class _Tree(HTMLParser):
    """The page as elements, as a browser would parse it (void elements closed at once)."""

    VOID = {"meta", "img", "br", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        while self.stack[-1].tag != tag:
            self.stack.pop()
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        # An element's own text, before its children's in all_text: enough for these cells.
        self.stack[-1].text += data


def parse(html: str) -> Element:
    tree = _Tree()
    tree.feed(html)
    tree.close()
    return tree.root


@pytest.fixture
def aged(config: ServeConfig) -> Iterator[tuple[Ledger, TestClient]]:
    """A ledger whose releases were created three hours ago, and the app over it."""
    ledger = Ledger(fakeredis.FakeRedis(), clock=lambda: time.time() - 3 * 3600 - 30)
    with TestClient(create_app(config, {}, ledger=ledger)) as client:
        yield ledger, client


@pytest.mark.parametrize("headers", [
    {}, basic("not-a-token"), basic(READER_TOKEN + "x"), {"Authorization": "Basic !!!"},
])
def test_without_a_valid_token_the_browser_is_asked_for_one(
        client: TestClient, ledger: Ledger, headers: dict[str, str]) -> None:
    ledger.create_release(SOURCE, [("quay.io/acme/app", ("v1",))])
    answer = client.get("/", headers=headers)
    assert answer.status_code == 401
    # Basic alone: a browser prompts for Basic, and only reads a header's first challenge.
    assert answer.headers["www-authenticate"] == 'Basic realm="fanout", charset="UTF-8"'
    assert answer.headers["content-type"].startswith("text/html")
    assert "password" in answer.text
    assert "quay.io/acme/app" not in answer.text


@pytest.mark.parametrize("headers", [basic(READER_TOKEN), basic(CI_TOKEN, user=""),
                                     bearer(READER_TOKEN)])
def test_any_valid_token_reads_the_page_whatever_the_user_name(
        client: TestClient, headers: dict[str, str]) -> None:
    answer = client.get("/", headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert parse(answer.text).find("p", **{"class": "empty"})


def test_the_page_shows_each_release_and_destination_newest_first(
        aged: tuple[Ledger, TestClient]) -> None:
    ledger, client = aged
    older = ledger.create_release(SOURCE, [("quay.io/acme/app", ("v1",))])
    ledger.mark_running(older, "quay.io/acme/app", worker="w1")
    ledger.mark_succeeded(older, "quay.io/acme/app", stats={"bytes_transferred": 1_500_000},
                          seconds=2.0)
    newer = ledger.create_release(SOURCE, [("quay.io/acme/app", ("v2", "latest")),
                                           ("ghcr.io/acme/app", ()),
                                           ("mirror.example/acme/app", ())],
                                  optional=["mirror.example/acme/app"])
    ledger.mark_running(newer, "quay.io/acme/app", worker="w1")
    ledger.mark_running(newer, "ghcr.io/acme/app", worker="w2")
    ledger.mark_retrying(newer, "ghcr.io/acme/app", error="503 Service Unavailable",
                         error_type="RegistryUnavailable", next_retry_at=time.time() + 5)
    ledger.mark_running(newer, "mirror.example/acme/app", worker="w3")
    ledger.mark_failed(newer, "mirror.example/acme/app", error="denied: no push access",
                       error_type="PermissionDenied")

    page = parse(client.get("/", headers=basic(READER_TOKEN)).text)

    sections = page.find("section", **{"class": "release"})
    assert [(s.attrs["data-release"], s.attrs["data-state"]) for s in sections] == [
        (newer, "running"), (older, "succeeded")]
    first, second = sections
    assert first.cell("source") == SOURCE
    assert first.cell("digest") == "sha256:" + "a" * 12
    assert first.cell("age") == "3h ago"
    rows = {r.attrs["data-destination"]: r for r in first.find("tr", **{"class": "destination"})}
    assert list(rows) == ["quay.io/acme/app", "ghcr.io/acme/app", "mirror.example/acme/app"]
    assert [r.attrs["data-state"] for r in rows.values()] == ["running", "retrying", "failed"]
    assert rows["quay.io/acme/app"].cell("name") == "quay.io/acme/app:v2, :latest"
    assert rows["ghcr.io/acme/app"].cell("error") == (
        "RegistryUnavailable: 503 Service Unavailable")
    assert rows["ghcr.io/acme/app"].cell("attempts") == "1"
    assert rows["mirror.example/acme/app"].cell("name").endswith("optional")
    assert rows["mirror.example/acme/app"].cell("state") == "failed"
    [done] = second.find("tr", **{"class": "destination"})
    assert (done.cell("state"), done.cell("attempts"), done.cell("bytes"), done.cell("error")) == (
        "succeeded", "1", "1.5 MB", "")


def test_the_release_state_is_final_only_when_every_required_destination_is(
        client: TestClient, ledger: Ledger) -> None:
    release_id = ledger.create_release(SOURCE, [("quay.io/acme/app", ()),
                                                ("ghcr.io/acme/app", ())])

    def state() -> str:
        [section] = parse(client.get("/", headers=basic(READER_TOKEN)).text).find("section")
        return section.attrs["data-state"]

    assert state() == "queued"
    ledger.mark_running(release_id, "quay.io/acme/app", worker="w1")
    assert state() == "running"
    ledger.mark_failed(release_id, "quay.io/acme/app", error="boom", error_type="X")
    assert state() == "running"  # the other one is still queued
    ledger.mark_running(release_id, "ghcr.io/acme/app", worker="w1")
    ledger.mark_succeeded(release_id, "ghcr.io/acme/app", stats={}, seconds=1)
    assert state() == "failed"


def test_at_most_the_newest_twenty_releases_are_shown(client: TestClient,
                                                      ledger: Ledger) -> None:
    ids = [ledger.create_release(SOURCE, [("quay.io/acme/app", ())]) for _ in range(22)]
    page = parse(client.get("/", headers=basic(READER_TOKEN)).text)
    shown = [s.attrs["data-release"] for s in page.find("section")]
    assert shown == ids[::-1][:20]


def test_what_the_ledger_holds_is_shown_as_text_never_as_markup(
        client: TestClient, ledger: Ledger) -> None:
    release_id = ledger.create_release(SOURCE, [(HOSTILE_NAME, ())])
    ledger.client.hset(release_key(release_id), "source", HOSTILE_SOURCE)
    ledger.mark_running(release_id, HOSTILE_NAME, worker="w1")
    ledger.mark_failed(release_id, HOSTILE_NAME, error=HOSTILE_ERROR + '"><img src=x '
                       "onerror=alert(4)>", error_type="X'><svg onload=alert(5)>")

    text = client.get("/", headers=basic(READER_TOKEN)).text
    page = parse(text)

    # Markup as the browser parses it: the page's own script and nothing else is an element.
    assert len(page.find("script")) == 1 and "alert(" not in page.find("script")[0].text
    assert page.find("img") == [] and page.find("svg") == []
    assert text.count("<script") == 1 and "<img" not in text and "<svg" not in text
    # ... and the hostile text is there, whole, as text and attribute values.
    [row] = page.find("tr", **{"class": "destination"})
    assert row.attrs["data-destination"] == HOSTILE_NAME
    assert row.cell("name") == HOSTILE_NAME
    assert row.cell("error") == ("X'><svg onload=alert(5)>: " + HOSTILE_ERROR
                                 + '"><img src=x onerror=alert(4)>')
    [section] = page.find("section")
    assert section.cell("source") == HOSTILE_SOURCE


def test_the_token_is_never_written_into_the_page(client: TestClient, ledger: Ledger) -> None:
    ledger.create_release(SOURCE, [("quay.io/acme/app", ())])
    headers = basic(READER_TOKEN)
    answer = client.get("/", headers=headers)
    assert answer.status_code == 200
    for secret in (READER_TOKEN, headers["Authorization"].split()[1]):
        assert secret not in answer.text
        assert secret not in str(answer.headers)


@pytest.mark.parametrize("headers", [basic(READER_TOKEN), {}])
def test_the_page_runs_only_its_own_script_and_cannot_be_framed(
        client: TestClient, headers: dict[str, str]) -> None:
    answer = client.get("/", headers=headers)
    csp = dict(part.strip().split(" ", 1)
               for part in answer.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert "unsafe" not in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    if answer.status_code == 200:
        # The inline script and style are the ones the policy names by hash.
        page = parse(answer.text)
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            [element] = page.find(tag)
            digest = base64.b64encode(hashlib.sha256(element.text.encode()).digest()).decode()
            assert csp[directive] == f"'sha256-{digest}'"


def test_the_script_writes_ledger_data_as_text_only() -> None:
    script = (files("service") / "page.js").read_text()
    # Every way to turn a string into markup; the script builds its elements node by node.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script
    assert "textContent" in script and "credentials: \"same-origin\"" in script


def test_the_page_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_an_unreachable_ledger_is_a_503_page(config: ServeConfig) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    app = create_app(config, {}, ledger=Ledger(fakeredis.FakeRedis(server=server)))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/", headers=basic(READER_TOKEN))
    assert answer.status_code == 503 and "ledger is unreachable" in answer.text
    assert answer.headers["cache-control"] == "no-store"


def test_tags_left_to_a_newer_release_are_named(client: TestClient, ledger: Ledger) -> None:
    release_id = ledger.create_release(SOURCE, [("quay.io/acme/app", ("v1", "latest"))])
    ledger.mark_running(release_id, "quay.io/acme/app", worker="w1")
    ledger.mark_succeeded(release_id, "quay.io/acme/app", stats={}, seconds=1.0,
                          superseded={"latest": "rel-newer"})

    [section] = parse(client.get("/", headers=basic(READER_TOKEN)).text).find("section")
    [row] = section.find("tr", **{"class": "destination"})

    assert row.cell("superseded") == ":latest → rel-newer"


# -- mirrors ----------------------------------------------------------------------------------

HOSTILE_MIRROR_ERROR = "listing <b>x</b>: <script>alert(6)</script>"


def _mirror_client(ledger: Ledger, mirrors: tuple[object, ...] | None = None) -> TestClient:
    from tests.service.mirror_fakes import MIRRORS, mirror_config, with_mirrors
    config = with_mirrors(mirror_config(), MIRRORS if mirrors is None else mirrors)  # type: ignore[arg-type]
    return TestClient(create_app(config, {}, ledger=ledger))


def test_the_mirrors_are_listed_with_their_last_run(ledger: Ledger) -> None:
    from workers.mirror_model import MirrorRun
    from workers.mirror_runs import MirrorRuns
    on_page = ledger.create_release(SOURCE, [("mirror.example/acme/app", ("1.27",))])
    now = time.time()
    runs = MirrorRuns(ledger.client)
    runs.record(MirrorRun(mirror="nginx", trigger="schedule", started_at=now - 7300,
                          finished_at=now - 7200, ok=True,
                          counts={"add": 0, "in_sync": 40}))
    runs.record(MirrorRun(mirror="nginx", trigger="schedule", started_at=now - 3700,
                          finished_at=now - 3600, ok=False, error=HOSTILE_MIRROR_ERROR))
    runs.record(MirrorRun(mirror="app", trigger="api", started_at=now - 70, finished_at=now - 60,
                          ok=True, counts={"add": 2, "update": 1, "in_sync": 5},
                          releases=(on_page, "rel-gone")))
    with _mirror_client(ledger) as client:
        text = client.get("/", headers=basic(READER_TOKEN)).text
    page = parse(text)
    [section] = page.find("section", id="mirrors")
    rows = {r.attrs["data-mirror"]: r for r in section.find("tr", **{"class": "mirror"})}
    assert list(rows) == ["nginx", "app", "elsewhere"]

    nginx = rows["nginx"]
    assert nginx.attrs["data-state"] == "failed"
    assert nginx.cell("state") == "failed 1h ago · failing since 1h ago · last ok 2h ago"
    assert nginx.cell("error") == HOSTILE_MIRROR_ERROR  # as text
    assert "docker.io/library/nginx → set mirrors" in nginx.cell("source")

    app = rows["app"]
    assert app.attrs["data-state"] == "succeeded" and app.cell("state") == "ok 1m ago"
    assert app.cell("counts") == "add 2 · update 1 · prune 0 · in sync 5 · held back 0"
    # The release on the page is linked to its section; the other is only named.
    [link] = app.find("a")
    assert link.attrs["href"] == f"#release-{on_page}"
    assert page.find("section", id=f"release-{on_page}")
    assert "rel-gone" in app.cell("releases") and len(app.find("code")) == 2

    assert rows["elsewhere"].attrs["data-state"] == "never"
    assert rows["elsewhere"].cell("state") == "not run yet"
    # Still only the page's own script and no injected markup.
    assert text.count("<script") == 1 and "<b>" not in text


def test_hostile_mirror_names_are_text(ledger: Ledger) -> None:
    from workers.mirror_model import Mirror
    hostile = Mirror(name='x"><img src=x onerror=alert(7)>', source="a.example/b</span><svg>",
                     destinations=("c.example/d<i>",))
    with _mirror_client(ledger, (hostile,)) as client:
        text = client.get("/", headers=basic(READER_TOKEN)).text
    page = parse(text)
    assert page.find("img") == [] and page.find("svg") == [] and page.find("i") == []
    [row] = page.find("tr", **{"class": "mirror"})
    assert row.attrs["data-mirror"] == hostile.name


def test_a_hostile_mirror_run_is_drawn_as_text(ledger: Ledger) -> None:
    from workers.mirror_model import MirrorRun
    from workers.mirror_runs import MirrorRuns
    # A run's error quotes what the source registry answered, and its release ids come from
    # Redis: neither may become markup, in a cell or in a link's attribute.
    error = ('denied: "</td></tr></table><script>alert(8)</script>'
             "<img src=x onerror=alert(9)>&amp;")
    release_id = 'rel-x"><svg onload=alert(10)>'
    now = time.time()
    MirrorRuns(ledger.client).record(MirrorRun(
        mirror="app", trigger="schedule", started_at=now - 70, finished_at=now - 60, ok=False,
        error=error, releases=(release_id,)))
    with _mirror_client(ledger) as client:
        text = client.get("/", headers=basic(READER_TOKEN)).text
    page = parse(text)

    assert text.count("<script") == 1 and "<img" not in text and "<svg" not in text
    assert page.find("img") == [] and page.find("svg") == [] and page.find("a") == []
    [section] = page.find("section", id="mirrors")
    rows = {r.attrs["data-mirror"]: r for r in section.find("tr", **{"class": "mirror"})}
    # The table is whole: the error closed no cell, row or table early.
    assert list(rows) == ["nginx", "app", "elsewhere"]
    app = rows["app"]
    assert app.attrs["data-state"] == "failed"
    assert app.cell("error") == error  # the "&amp;" included, as written
    assert app.cell("releases") == release_id
    assert app.cell("state") == "failed 1m ago · failing since 1m ago"


def test_without_mirrors_there_is_no_mirror_section(client: TestClient) -> None:
    page = parse(client.get("/", headers=basic(READER_TOKEN)).text)
    assert page.find("section", id="mirrors") == []
