"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for tests of what
a browser does with a page: run its script, follow its Content-Security-Policy, answer its auth
challenge.

::

    with Chromium(tmp_path / "chromium") as browser:
        browser.answer_auth("anyone", token)     # as a person at the login prompt would
        browser.navigate("http://127.0.0.1:8080/")
        title = browser.evaluate("document.title")

Chromium runs in a process group of its own, and the whole group is stopped on exit: its
renderer and zygote processes must not outlive the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import websocket

from tests.support.queue import wait_until

BINARY = shutil.which("chromium")
Handler = Callable[[dict[str, Any]], None]


class DevToolsError(Exception):
    """The browser refused a command, or the page's script threw."""


class Chromium:
    """One headless Chromium with one page, and a DevTools connection to that page."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.profile = root / "profile"
        self.challenges: list[dict[str, Any]] = []
        self.console: list[str] = []  # the page's errors and warnings: CSP, script, network
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: websocket.WebSocket | None = None
        self._next_id = 0
        self._handlers: dict[str, Handler] = {}

    def start(self) -> Chromium:
        assert BINARY, "chromium is not installed (scripts/setup.sh installs it)"
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [BINARY, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-proxy-server",
                "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"]
        with (self.root / "chromium.log").open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self) -> None:
        # Port 0: Chromium picks a free port and writes it here (no port race with others).
        active = self.profile / "DevToolsActivePort"
        port = wait_until(lambda: self._port(active), 30, "chromium: DevToolsActivePort",
                          self.log)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        [page] = [t for t in targets if t["type"] == "page"]
        # No Origin header: Chromium refuses DevTools connections from an origin not allowed.
        self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                                   suppress_origin=True)

    def _port(self, active: Path) -> int | None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"chromium exited:\n{self.log()}")
        lines = active.read_text().splitlines() if active.exists() else []
        return int(lines[0]) if len(lines) == 2 else None

    def log(self) -> str:
        path = self.root / "chromium.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the group: browser, zygote, renderers
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the browser
        except ProcessLookupError:
            pass  # the whole group is gone
        process.wait(10)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the protocol -----------------------------------------------------------------------

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a command and return its result, handling the events that arrive meanwhile."""
        sent = self.post(method, **params)
        while True:
            message = self._receive()
            if message.get("id") == sent:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def post(self, method: str, **params: Any) -> int:
        """Send a command without waiting for its answer (an event handler's reply)."""
        assert self._socket is not None, "not started"
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        return self._next_id

    def on(self, event: str, handler: Handler) -> None:
        self._handlers[event] = handler

    def pump(self, seconds: float) -> None:
        """Handle events for ``seconds``: paused requests wait for us while we sleep."""
        assert self._socket is not None, "not started"
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._socket.settimeout(left)
            try:
                self._receive()
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self._socket.settimeout(30)

    def _receive(self) -> dict[str, Any]:
        assert self._socket is not None, "not started"
        message: dict[str, Any] = json.loads(self._socket.recv())
        handler = self._handlers.get(message.get("method", ""))
        if handler is not None:
            handler(message.get("params", {}))
        return message

    # -- what a test does with a page ---------------------------------------------------------

    def answer_auth(self, username: str, password: str) -> None:
        """Answer every auth challenge as a person at the prompt would, and keep each challenge
        (``self.challenges``: scheme, realm, origin). Stop with :meth:`stop_answering`."""
        def paused(params: dict[str, Any]) -> None:
            self.post("Fetch.continueRequest", requestId=params["requestId"])

        def challenged(params: dict[str, Any]) -> None:
            self.challenges.append(params["authChallenge"])
            self.post("Fetch.continueWithAuth", requestId=params["requestId"],
                      authChallengeResponse={"response": "ProvideCredentials",
                                             "username": username, "password": password})

        self.on("Fetch.requestPaused", paused)
        self.on("Fetch.authRequired", challenged)
        self.send("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])

    def stop_answering(self) -> None:
        """From now on a challenge goes unanswered: headless, that is a failed request."""
        self.send("Fetch.disable")

    def navigate(self, url: str, timeout: float = 30) -> None:
        """Open ``url`` and wait until its document has loaded."""
        self.on("Log.entryAdded", lambda p: self.console.append(
            f"{p['entry']['level']} {p['entry']['source']}: {p['entry']['text']} "
            f"{p['entry'].get('url', '')}".rstrip()))
        self.on("Runtime.exceptionThrown", lambda p: self.console.append(
            f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}"))
        for domain in ("Page", "Log", "Runtime"):
            self.send(f"{domain}.enable")
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigating to the page: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout, "the page loaded")

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (JSON-able), awaited if it is a promise."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Events are handled between."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                console = "\n".join(self.console)
                raise AssertionError(f"{what}: not within {timeout:g}s (last: {value!r})\n"
                                     f"the page's console:\n{console}")
            self.pump(0.1)
