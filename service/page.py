"""``GET /``: the release page. The newest releases, each destination's state, attempts, bytes
and last error, rendered here and kept current by a small script (``page.js``) that polls
``GET /v1/releases``. Below them, the configured mirrors with their last run, each release a
run made linked to its section when it is on the page; the script keeps them current from
``GET /v1/mirrors`` in the same poll, and draws them as :func:`_mirror` does.

A browser gives its token as the password of HTTP Basic auth, so the page's 401 challenges with
Basic alone. Everything from the ledger (sources, destination names, errors) is chosen by
whoever pushes or enqueues, so it is escaped here and written as text by the script; the
Content-Security-Policy runs only the page's own script and style (by hash), so a missed escape
would still run nothing. The token is never written into the page.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from html import escape
from importlib.resources import files

import redis
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from producer.output import human_bytes, short_digest
from workers.mirror_model import Mirror
from workers.mirror_runs import MirrorRuns, MirrorState
from workers.records import DestinationRecord, Release

from .auth import authenticate
from .errors import ApiError
from .mirrors import configured_mirrors
from .state import state_of

router = APIRouter(include_in_schema=False)

RECENT = 20
_SCRIPT = (files(__package__) / "page.js").read_text(encoding="utf-8")
_STYLE = (files(__package__) / "page.css").read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# Basic alone: a browser prompts only for a scheme it knows, and Chromium reads only the first
# challenge of a header, so the API's "Bearer …, Basic …" would never bring up the prompt.
CHALLENGE = {"WWW-Authenticate": 'Basic realm="fanout", charset="UTF-8"'}


@router.get("/", response_class=HTMLResponse)
def page(request: Request) -> HTMLResponse:
    state = state_of(request)
    try:
        authenticate(request, state.config)
    except ApiError:
        return _answer(401, "Sign in", "<p>No valid token: give a token as the password (the "
                                       "user name is ignored).</p>", CHALLENGE)
    mirrors = configured_mirrors(state.config)
    try:
        releases = state.ledger.recent_releases(RECENT)
        runs = MirrorRuns(state.redis).states(m.name for m in mirrors) if mirrors else {}
    except (redis.RedisError, OSError) as exc:
        return _answer(503, "Unavailable", f"<p>The ledger is unreachable "
                                           f"({escape(type(exc).__name__)}).</p>")
    return HTMLResponse(render(releases, now=time.time(),
                               mirrors=[(m, runs[m.name]) for m in mirrors]), headers=HEADERS)


def _answer(status: int, title: str, body: str,
            headers: dict[str, str] | None = None) -> HTMLResponse:
    text = (f"<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>fanout · {_e(title)}"
            f"</title><h1>{_e(title)}</h1>{body}</html>")
    return HTMLResponse(text, status_code=status, headers={**HEADERS, **(headers or {})})


def render(releases: Sequence[Release], *, now: float,
           mirrors: Sequence[tuple[Mirror, MirrorState]] = ()) -> str:
    """The whole page: the releases as the script draws them too, the mirrors (none: no
    section), the script and the style."""
    sections = "".join(_release(r, now) for r in releases) or _EMPTY
    shown = {r.id for r in releases}
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>fanout · releases</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>fanout releases</h1>\n"
        "<p id=\"status\" data-state=\"loaded\">As the page was loaded; live updates start "
        "in a second (they need JavaScript).</p>\n"
        f"<main id=\"releases\" data-limit=\"{RECENT}\">{sections}</main>\n"
        f"{_mirrors(mirrors, shown, now)}"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


_EMPTY = "<p class=\"empty\">No releases yet.</p>"


def release_state(release: Release) -> str:
    """One word for the release: succeeded or failed once final, else running or queued."""
    if release.done:
        return "succeeded" if release.ok else "failed"
    return "running" if any(d.state != "queued" for d in release.required) else "queued"


def _release(release: Release, now: float) -> str:
    state = release_state(release)
    rows = "".join(_destination(name, d) for name, d in release.destinations.items())
    return (
        f"<section class=\"release\" id=\"release-{_e(release.id)}\" "
        f"data-release=\"{_e(release.id)}\" "
        f"data-state=\"{_e(state)}\">"
        f"<h2><span class=\"state\">{_e(state)}</span> <code class=\"id\">{_e(release.id)}"
        "</code></h2>"
        f"<p class=\"meta\"><span class=\"source\">{_e(release.source)}</span> · "
        f"<code class=\"digest\" title=\"{_e(release.digest)}\">"
        f"{_e(short_digest(release.digest))}</code> · "
        f"<span class=\"age\">{age(now - release.created_at)} ago</span></p>"
        "<table><thead><tr><th>destination</th><th>state</th><th>attempts</th><th>bytes</th>"
        f"<th>last error</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _destination(name: str, record: DestinationRecord) -> str:
    label = _e(name)
    if record.tags:
        label += f"<span class=\"tags\">:{_e(', :'.join(record.tags))}</span>"
    if record.optional:
        label += " <span class=\"optional\">optional</span>"
    if record.superseded:
        label += f" <span class=\"superseded\">{_e(superseded_text(record.superseded))}</span>"
    error = ""
    if record.last_error:
        error = f"{record.error_type}: {record.last_error}" if record.error_type \
            else record.last_error
    return (
        f"<tr class=\"destination\" data-destination=\"{_e(name)}\" "
        f"data-state=\"{_e(record.state)}\"><td class=\"name\">{label}</td>"
        f"<td class=\"state\">{_e(record.state)}</td>"
        f"<td class=\"attempts\">{record.attempts}</td>"
        f"<td class=\"bytes\">{_e(human_bytes(record.bytes))}</td>"
        f"<td class=\"error\">{_e(error)}</td></tr>")


def _mirrors(mirrors: Sequence[tuple[Mirror, MirrorState]], shown: set[str],
             now: float) -> str:
    if not mirrors:
        return ""
    rows = "".join(_mirror(m, state, shown, now) for m, state in mirrors)
    return ("<section id=\"mirrors\"><h2>Mirrors</h2><table><thead><tr><th>mirror</th>"
            "<th>last run</th><th>tags</th><th>releases</th><th>error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>\n")


_COUNTS = (("add", "add"), ("update", "update"), ("prune", "prune"), ("in_sync", "in sync"),
           ("held_back", "held back"))


def _mirror(mirror: Mirror, state: MirrorState, shown: set[str], now: float) -> str:
    run = state.last
    where = f"set {mirror.to}" if mirror.to else ", ".join(mirror.destinations)
    label = (f"{_e(mirror.name)} <span class=\"source\">{_e(mirror.source)} → "
             f"{_e(where)}</span>")
    if run is None:
        word, when, counts, releases, error = "never", "not run yet", "", "", ""
    else:
        word = "succeeded" if run.ok else "failed"
        when = f"{'ok' if run.ok else 'failed'} {age(now - run.finished_at)} ago"
        counts = _counts(run.counts)
        releases = " ".join(_release_link(r, shown) for r in run.releases)
        error = run.error or ""
    if state.failing_since is not None:
        when += f" · failing since {age(now - state.failing_since)} ago"
        if state.last_success is not None:
            when += f" · last ok {age(now - state.last_success)} ago"
    return (f"<tr class=\"mirror\" data-mirror=\"{_e(mirror.name)}\" data-state=\"{word}\">"
            f"<td class=\"name\">{label}</td><td class=\"state\">{_e(when)}</td>"
            f"<td class=\"counts\">{_e(counts)}</td><td class=\"releases\">{releases}</td>"
            f"<td class=\"error\">{_e(error)}</td></tr>")


def _counts(counts: Mapping[str, int]) -> str:
    return " · ".join(f"{label} {int(counts.get(key, 0))}" for key, label in _COUNTS)


def _release_link(release_id: str, shown: set[str]) -> str:
    if release_id in shown:
        return f"<a href=\"#release-{_e(release_id)}\"><code>{_e(release_id)}</code></a>"
    return f"<code>{_e(release_id)}</code>"


def superseded_text(superseded: dict[str, str]) -> str:
    """``latest → rel-…`` per tag left to a newer release: as the script writes it."""
    return ", ".join(f":{tag} → {newer}" for tag, newer in sorted(superseded.items()))


def age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: as the script writes it."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _e(text: str) -> str:
    return escape(text, quote=True)
