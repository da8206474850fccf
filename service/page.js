// The release page keeps itself current: it asks GET /v1/releases?limit=N once a second and
// draws the answer again, and with it GET /v1/mirrors for the mirrors' table when the page has
// one (the server draws it only when mirrors are configured). Polling the list rather than
// following /v1/releases/{id}/events: one request covers every release shown and shows new
// ones as they are enqueued, where a stream per release would hold one of the browser's few
// connections to the host each (six over HTTP/1.1) and need opening as releases appear. The
// browser sends the Basic credentials it was given for this origin; the script never sees them.
//
// Everything drawn comes from the ledger and the mirror runs, where sources, destination
// names and errors are chosen by whoever pushes, enqueues or runs a mirror: it is written with
// textContent and setAttribute only, never as markup. The structure is the server's
// (service/page.py); keep the two alike.
"use strict";
(function () {
  const INTERVAL_MS = 1000;
  const AFTER_ERROR_MS = 5000;
  const list = document.getElementById("releases");
  const mirrorRows = document.querySelector("#mirrors tbody"); // null: no mirrors configured
  const status = document.getElementById("status");
  // location.origin carries no user:password@ from the address bar; fetch refuses URLs that do.
  const releasesUrl = new URL("/v1/releases?limit=" + (Number(list.dataset.limit) || 20),
                              location.origin);
  const mirrorsUrl = new URL("/v1/mirrors", location.origin);
  const COUNTS = [["add", "add"], ["update", "update"], ["prune", "prune"],
                  ["in_sync", "in sync"], ["held_back", "held back"]];

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      node.setAttribute(name, String(value));
    }
    node.append(...children); // strings become text nodes
    return node;
  }

  function humanBytes(count) {
    let value = count;
    for (const unit of ["B", "kB", "MB", "GB"]) {
      if (value < 1000 || unit === "GB") {
        return unit === "B" ? value.toFixed(0) + " B" : value.toFixed(1) + " " + unit;
      }
      value /= 1000;
    }
    return value.toFixed(1) + " GB";
  }

  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h";
    return Math.floor(s / 86400) + "d";
  }

  function overallState(release) {
    if (release.done) return release.ok ? "succeeded" : "failed";
    const all = Object.values(release.destinations);
    const required = all.filter((d) => !d.optional);
    const counted = required.length ? required : all;
    return counted.some((d) => d.state !== "queued") ? "running" : "queued";
  }

  function destinationRow(name, d) {
    const label = el("td", {class: "name"}, name);
    if (d.tags.length) label.append(el("span", {class: "tags"}, ":" + d.tags.join(", :")));
    if (d.optional) label.append(" ", el("span", {class: "optional"}, "optional"));
    const superseded = Object.entries(d.superseded || {}).sort(([a], [b]) => (a < b ? -1 : 1));
    if (superseded.length) {
      label.append(" ", el("span", {class: "superseded"},
                           superseded.map(([tag, newer]) => ":" + tag + " → " + newer).join(", ")));
    }
    const error = d.last_error ? (d.error_type ? d.error_type + ": " : "") + d.last_error : "";
    return el("tr", {class: "destination", "data-destination": name, "data-state": d.state},
              label, el("td", {class: "state"}, d.state),
              el("td", {class: "attempts"}, String(d.attempts)),
              el("td", {class: "bytes"}, humanBytes(d.bytes)),
              el("td", {class: "error"}, error));
  }

  function releaseSection(release, now) {
    const state = overallState(release);
    const rows = Object.entries(release.destinations).map(([n, d]) => destinationRow(n, d));
    return el("section", {class: "release", id: "release-" + release.id,
                          "data-release": release.id, "data-state": state},
      el("h2", {}, el("span", {class: "state"}, state), " ",
         el("code", {class: "id"}, release.id)),
      el("p", {class: "meta"},
         el("span", {class: "source"}, release.source), " · ",
         el("code", {class: "digest", title: release.digest},
            release.digest ? release.digest.slice(0, 19) : "-"), " · ",
         el("span", {class: "age"}, age(now - release.created_at) + " ago")),
      el("table", {},
         el("thead", {}, el("tr", {}, ...["destination", "state", "attempts", "bytes",
                                          "last error"].map((h) => el("th", {}, h)))),
         el("tbody", {}, ...rows)));
  }

  function render(releases, now) {
    if (!releases.length) {
      list.replaceChildren(el("p", {class: "empty"}, "No releases yet."));
      return;
    }
    list.replaceChildren(...releases.map((r) => releaseSection(r, now)));
  }

  function releaseLink(id, shown) {
    const code = el("code", {}, id);
    return shown.has(id) ? el("a", {href: "#release-" + id}, code) : code;
  }

  function mirrorRow(mirror, shown, now) {
    const run = mirror.last_run;
    const where = mirror.to ? "set " + mirror.to : mirror.destinations.join(", ");
    let word = "never", when = "not run yet", counts = "", error = "";
    const releases = el("td", {class: "releases"});
    if (run) {
      word = run.ok ? "succeeded" : "failed";
      when = (run.ok ? "ok " : "failed ") + age(now - run.finished_at) + " ago";
      counts = COUNTS.map(([key, label]) => label + " " + Math.trunc(Number(run.counts[key]) || 0))
        .join(" · ");
      run.releases.forEach((id, i) => {
        if (i) releases.append(" ");
        releases.append(releaseLink(id, shown));
      });
      error = run.error || "";
    }
    if (typeof mirror.failing_since === "number") {
      when += " · failing since " + age(now - mirror.failing_since) + " ago";
      if (typeof mirror.last_success === "number") {
        when += " · last ok " + age(now - mirror.last_success) + " ago";
      }
    }
    return el("tr", {class: "mirror", "data-mirror": mirror.name, "data-state": word},
              el("td", {class: "name"}, mirror.name, " ",
                 el("span", {class: "source"}, mirror.source + " → " + where)),
              el("td", {class: "state"}, when), el("td", {class: "counts"}, counts), releases,
              el("td", {class: "error"}, error));
  }

  function renderMirrors(mirrors, shown, now) {
    mirrorRows.replaceChildren(...mirrors.map((m) => mirrorRow(m, shown, now)));
  }

  // The answer to one GET: its JSON and the server's Date header; null when refused (401).
  async function get(url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                       headers: {Accept: "application/json"}});
    if (response.status === 401) return null;
    if (!response.ok) throw new Error("HTTP " + response.status + " from " + url.pathname);
    return {body: await response.json(), date: response.headers.get("Date")};
  }

  function say(state, message) {
    status.dataset.state = state;
    status.textContent = message;
  }

  async function poll() {
    let delay = INTERVAL_MS;
    if (!document.hidden) { // a tab in the background costs the server nothing
      try {
        // Both answers are drawn together or not at all: a mirror's release links point at
        // the releases drawn in the same update, as on the server's page.
        const [releases, mirrors] = await Promise.all([
          get(releasesUrl), mirrorRows ? get(mirrorsUrl) : {body: {mirrors: []}}]);
        if (releases === null || mirrors === null) {
          say("stale", "The token is no longer accepted: reload the page to sign in again.");
          return; // asking again would only be refused again
        }
        // Ages by the server's clock (its Date header), not this machine's.
        const now = (Date.parse(releases.date || "") || Date.now()) / 1000;
        render(releases.body.releases, now);
        if (mirrorRows) {
          renderMirrors(mirrors.body.mirrors, new Set(releases.body.releases.map((r) => r.id)),
                        now);
        }
        say("live", "Live: updated " + new Date().toLocaleTimeString() + ".");
      } catch (error) {
        delay = AFTER_ERROR_MS;
        say("stale", "Not updated since the last answer (" + error.message + "); retrying.");
      }
    }
    setTimeout(poll, delay);
  }

  setTimeout(poll, INTERVAL_MS);
})();
