"""The release page in a real browser: headless Chromium signs in at the Basic prompt, sees a
release and its destinations' states, and sees a destination go from running to succeeded
without the page being loaded again. Everything behind it is real: ``fanout serve``, Redis, a
celery worker and registries, one of them behind a proxy that holds the copy's manifest upload
until the test lets it through. A mirror run recorded after the page loaded shows up in its
mirrors table too, drawn by the script exactly as the server draws it."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import Chromium
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import Delay, FaultProxy, Rule
from tests.support.images import manifest_exists, push_oci_image
from tests.support.queue import RedisServer, ledger_for, queue_env, start_worker, wait_until
from tests.support.registries import RegistrySet
from tests.support.serve import serving, token_toml
from workers.mirror_model import MirrorRun
from workers.mirror_runs import MirrorRuns
from workers.records import release_key

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("chromium") is None,
                       reason="chromium is not installed (scripts/setup.sh installs it)"),
]

TOKEN = "page-token-" + secrets.token_hex(8)
DEADLINE = 60.0

# What the test reads off the page: the DOM the server rendered or the script drew since.
READ_PAGE = """JSON.stringify({
  status: document.getElementById("status").dataset.state,
  loadId: window.__loadId || null,
  releases: [...document.querySelectorAll("section.release")].map((s) => ({
    id: s.dataset.release, state: s.dataset.state,
    destinations: Object.fromEntries([...s.querySelectorAll("tr.destination")].map((r) => [
      r.dataset.destination, {state: r.dataset.state,
                              attempts: r.querySelector(".attempts").textContent,
                              bytes: r.querySelector(".bytes").textContent}]))})),
})"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    with Chromium(tmp_path / "chromium") as chromium:
        yield chromium


def read(browser: Chromium) -> dict[str, Any]:
    page: dict[str, Any] = json.loads(browser.evaluate(READ_PAGE))
    return page


def test_the_page_shows_a_release_and_follows_it_to_success_without_a_reload(
    registries: RegistrySet, unique_repo: str, tmp_path: Path, redis_server: RedisServer,
    browser: Chromium,
) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=2)
    # Longer task limits than the fast defaults: the held upload must not time the attempt out.
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []),
                    FANOUT_TASK_TIME_LIMIT="90", FANOUT_VISIBILITY_TIMEOUT="150")
    with FaultProxy(registries.dest2.url) as gated:
        hold = gated.add(Rule(Delay(DEADLINE * 2), method="PUT", path=r"/manifests/"))
        free = f"{registries.dest1.host}/{unique_repo}"
        held = f"{gated.host}/{unique_repo}"
        config = (f'[destinations]\nrelease = ["{free}", "{held}"]\n'
                  + token_toml("page", TOKEN, ["release"], [f"{registries.source.host}/*"]))
        # Two processes: the free destination is copied while the held one waits.
        worker = start_worker("page", env, tmp_path, pool="prefork", concurrency=2,
                              loglevel="INFO")
        try:
            with serving(tmp_path / "serve", config, env=env) as served:
                with served.client(TOKEN) as api:
                    created = api.post("/v1/releases", json={"source": image.reference,
                                                             "to": "release", "tags": ["v1"]})
                    assert created.status_code == 201, created.text
                    release_id = created.json()["id"]

                    def states() -> dict[str, str]:
                        document = api.get(f"/v1/releases/{release_id}").json()
                        return {n: d["state"] for n, d in document["destinations"].items()}

                    wait_until(lambda: states() == {free: "succeeded", held: "running"},
                               DEADLINE, "one destination copied, the other held",
                               lambda: f"{states()}\n{worker.log()[-3000:]}")

                browser.answer_auth("anyone", TOKEN)
                browser.navigate(f"{served.url}/")
                # Signed in at the prompt the page's challenge brings up: Basic, realm fanout.
                assert [(c["scheme"].lower(), c["realm"]) for c in browser.challenges] == [
                    ("basic", "fanout")]
                # From here on the page is on its own: its polls must carry the credentials
                # the browser keeps, with nobody to answer another challenge.
                browser.stop_answering()
                loaded = read(browser)
                [shown] = loaded["releases"]
                assert shown["id"] == release_id and shown["state"] == "running"
                assert {n: d["state"] for n, d in shown["destinations"].items()} == {
                    free: "succeeded", held: "running"}
                assert shown["destinations"][free]["bytes"] != "0 B"
                assert shown["destinations"][held]["attempts"] == "1"

                load_id = secrets.token_hex(8)
                browser.evaluate(f"window.__loadId = {json.dumps(load_id)}")
                browser.wait_for("document.getElementById('status').dataset.state === 'live'",
                                 DEADLINE, "the page's first update")
                assert read(browser)["releases"][0]["destinations"][held]["state"] == "running"

                gated.clear()  # the held manifest upload goes through

                browser.wait_for(
                    f"document.querySelector('section.release[data-release=\"{release_id}\"]')"
                    "?.dataset.state === 'succeeded'", DEADLINE, "the release shown succeeded")
                final = read(browser)
                assert final["loadId"] == load_id  # the same page load, updated in place
                assert final["status"] == "live"
                assert {n: d["state"] for n, d in final["releases"][0]["destinations"].items()} \
                    == {free: "succeeded", held: "succeeded"}
                # No policy violation, script error or failed poll on the way.
                assert [c for c in browser.console if "/favicon.ico" not in c] == []
                html = browser.evaluate("document.documentElement.outerHTML")
                assert TOKEN not in html
                assert TOKEN not in served.log()
        finally:
            worker.stop()
    assert hold.hits >= 1
    assert manifest_exists(registries.dest2, f"{unique_repo}:v1")


def test_hostile_ledger_content_is_drawn_as_text_by_the_browser(
    tmp_path: Path, redis_server: RedisServer, browser: Chromium,
) -> None:
    # Names and errors as a hostile pusher would choose them, written straight to the ledger.
    name = 'evil.example/app"><img src=x onerror="window.__pwned=1">'
    error = "<script>window.__pwned=2</script><svg onload=\"window.__pwned=3\">"
    source = 'registry.example/x"><img src=x onerror="window.__pwned=4">'
    ledger = ledger_for(f"{redis_server.url}/0")
    release_id = ledger.create_release(f"registry.example/x@sha256:{'c' * 64}", [(name, ())])
    ledger.client.hset(release_key(release_id), "source", source)
    ledger.mark_running(release_id, name, worker="w1")
    ledger.mark_failed(release_id, name, error=error, error_type="X")
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    with serving(tmp_path / "serve", token_toml("page", TOKEN, [], []), env=env) as served:
        browser.answer_auth("anyone", TOKEN)
        browser.navigate(f"{served.url}/")
        browser.stop_answering()
        # Drawn by the server, then by the script from the JSON: both must be text.
        for drawn_by in ("the server", "the script"):
            if drawn_by == "the script":
                browser.evaluate("document.querySelector('tr.destination').remove()")
                browser.wait_for("document.querySelector('tr.destination') !== null",
                                 DEADLINE, "the script drawing the release again")
            page = browser.evaluate("""({
              pwned: window.__pwned || null,
              injected: document.querySelectorAll("img, svg, script").length,
              name: document.querySelector("tr.destination").dataset.destination,
              source: document.querySelector(".source").textContent,
              error: document.querySelector("tr.destination .error").textContent})""")
            assert page == {"pwned": None, "injected": 1, "name": name, "source": source,
                            "error": f"X: {error}"}, drawn_by
    assert [c for c in browser.console if "/favicon.ico" not in c] == []


# The mirrors' rows as drawn now, and as the server draws them now (its page fetched and parsed
# inert, scripts not run): one synchronous read of each, so no poll redraws in between.
MIRROR_ROWS = """(async () => {
  const answer = await fetch("/", {credentials: "same-origin", cache: "no-store"});
  const served = new DOMParser().parseFromString(await answer.text(), "text/html");
  return {served: served.querySelector("#mirrors tbody").innerHTML,
          drawn: document.querySelector("#mirrors tbody").innerHTML};
})()"""


def test_a_mirror_run_recorded_after_the_page_loaded_shows_without_a_reload(
    tmp_path: Path, redis_server: RedisServer, browser: Chromium,
) -> None:
    ledger = ledger_for(f"{redis_server.url}/0")
    runs = MirrorRuns(ledger.client)
    on_page = ledger.create_release(f"src.example/app@sha256:{'d' * 64}",
                                    [("dest.example/app", ())])
    # Hours ago, so that the ages read the same to the server and the script whenever drawn.
    hours_ago = time.time() - 3 * 3600
    error = "listing: <script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"
    runs.record(MirrorRun(mirror="early", trigger="schedule", started_at=hours_ago - 60,
                          finished_at=hours_ago, ok=False, error=error, listed=False))
    config = ('[destinations]\nmirrors = ["dest.example/app"]\n'
              + token_toml("page", TOKEN, [], [])
              + '[[mirrors]]\nname = "early"\nsource = "src.example/app"\nto = "mirrors"\n'
              + '[[mirrors]]\nname = "late"\nsource = "src.example/other"\n'
                'destinations = ["dest.example/other", "dest2.example/other"]\n')
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    with serving(tmp_path / "serve", config, env=env) as served:
        browser.answer_auth("anyone", TOKEN)
        browser.navigate(f"{served.url}/")
        browser.stop_answering()
        state = "document.querySelector('tr.mirror[data-mirror=\"late\"]').dataset.state"
        assert browser.evaluate(state) == "never"  # as the server drew it
        load_id = secrets.token_hex(8)
        browser.evaluate(f"window.__loadId = {json.dumps(load_id)}")
        browser.wait_for("document.getElementById('status').dataset.state === 'live'",
                         DEADLINE, "the page's first update")

        runs.record(MirrorRun(mirror="late", trigger="api", started_at=hours_ago - 30,
                              finished_at=hours_ago, ok=True,
                              counts={"add": 2, "in_sync": 7, "held_back": 1},
                              releases=(on_page, "rel-gone")))

        browser.wait_for(f"{state} === 'succeeded'", DEADLINE, "the late mirror's run shown")
        late = browser.evaluate("""(() => {
          const row = document.querySelector('tr.mirror[data-mirror="late"]');
          return {loadId: window.__loadId, pwned: window.__pwned || null,
                  injected: document.querySelectorAll("img, svg, script").length,
                  name: row.querySelector(".name").textContent,
                  state: row.querySelector(".state").textContent,
                  counts: row.querySelector(".counts").textContent,
                  releases: row.querySelector(".releases").textContent,
                  links: [...row.querySelectorAll("a")].map((a) => a.getAttribute("href")),
                  earlyError: document.querySelector(
                    'tr.mirror[data-mirror="early"] .error').textContent};
        })()""")
        assert late == {
            "loadId": load_id, "pwned": None, "injected": 1,
            "name": "late src.example/other → dest.example/other, dest2.example/other",
            "state": "ok 3h ago",
            "counts": "add 2 · update 0 · prune 0 · in sync 7 · held back 1",
            "releases": f"{on_page} rel-gone", "links": [f"#release-{on_page}"],
            "earlyError": error}
        # The script's table is the server's, markup for markup.
        rows = browser.evaluate(MIRROR_ROWS)
        assert rows["drawn"] == rows["served"]
        assert 'data-state="failed"' in rows["drawn"] and "failing since 3h ago" in rows["drawn"]
    assert [c for c in browser.console if "/favicon.ico" not in c] == []
