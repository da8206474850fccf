"""Telling receivers that a release has finished: a signed POST of its document to each URL.

::

    copy task: a destination succeeds, or fails for good
      └─ Finals.settle ── Ledger.settle_final: one caller wins each final transition (epoch)
           └─ FANOUT_NOTIFY_ON allows it ──▶ one ``fanout.notify`` task per URL, carrying the
                release id, the epoch, the URL's id (never the URL) and the release document
    notify task ── Notifier.deliver, keyed by (release, epoch, URL) in Redis
      ├─ that key says delivered, or given up ──────────────────────────▶ Skipped (no POST)
      ├─ that key says another delivery is under way ───────────────────▶ RetryLater
      └─ POST ─┬─ 2xx ──────────────────────────────────────────────────▶ Delivered
               ├─ 5xx, 408, 429, connection error, timeout ─▶ RetryLater (backoff), or GaveUp
               └─ any other answer (4xx, 3xx) ──────────────────────────▶ GaveUp

The body is the release document, byte for byte the JSON of ``fanout status --json``
(``FANOUT_NOTIFY_FORMAT=slack``: a Slack message instead, ``workers/slack.py``), with
``X-Fanout-Event: release.finished``, ``X-Fanout-Delivery`` (the same id on every retry of one
notification, so a receiver can drop a repeat) and, with a secret, GitHub's signature scheme:
``X-Fanout-Signature-256: sha256=<hex HMAC-SHA256 of the body>``. The secret and the URLs stay
in the workers' environment: a webhook URL is often a credential itself (Slack's are).

A mirror failing for longer than two of its intervals, and its recovery, go out the same way
to the same URLs (``workers/mirror_alerts.py``): ``X-Fanout-Event: mirror.failing`` or
``mirror.recovered``, ``X-Fanout-Mirror: <name>``, and the alert's document as the body.

Settings: ``workers/notify_settings.py``. Worst case with the defaults: 9 POSTs within about
16 minutes, then the notification is given up (logged). A worker killed mid-POST has its message
delivered again, and the POST may repeat: ``X-Fanout-Delivery`` is the receiver's way to tell.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import redis

from registry.errors import (
    RegistryError,
    error_from_response,
    error_from_transport,
    is_transient,
    retry_after_of,
)

from .ledger import Ledger
from .notify_settings import NotifySettings, Target
from .records import Release
from .release_document import release_document
from .routing import DEFAULT_QUEUE, queue_for
from .slack import mirror_slack_message, slack_message

log = logging.getLogger("fanout.notify")

NOTIFY_TASK_NAME = "fanout.notify"
EVENT = "release.finished"
# A mirror failing for longer than two of its intervals, and its recovery (mirror_alerts.py).
MIRROR_FAILING = "mirror.failing"
MIRROR_RECOVERED = "mirror.recovered"
EVENTS = (EVENT, MIRROR_FAILING, MIRROR_RECOVERED)
_KEY_PREFIX = "fanout:notify:"
# X-Fanout-Delivery ids are uuid5s of (release, epoch, URL id) in this namespace.
_DELIVERY_NAMESPACE = uuid.UUID("6f1c0f3e-8a52-4c1b-9a55-3f0c2d7b9e41")
_REASON_MAX = 300
# A mirror's events name it as their subject where a release's name the release.
MIRROR_SUBJECT = "mirror:"


# -- the request ------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """GitHub's webhook signature of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(release_id: str, epoch: int, target_id: str, event: str = EVENT) -> str:
    """The same for every retry of one notification, different for every other."""
    name = f"{release_id}\n{epoch}\n{target_id}" + ("" if event == EVENT else f"\n{event}")
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, name))


def body_for(document: Mapping[str, Any], fmt: str, event: str = EVENT) -> bytes:
    """The bytes POSTed: the document, or a Slack message summarising it."""
    if fmt == "slack":
        payload = slack_message(document) if event == EVENT else mirror_slack_message(document)
    else:
        payload = dict(document)
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def headers_for(body: bytes, *, release_id: str, epoch: int, target_id: str,
                secret: str | None, event: str = EVENT) -> dict[str, str]:
    """``release_id``: the release, or ``mirror:<name>`` for a mirror's events."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fanout-notify",
        "X-Fanout-Event": event,
        "X-Fanout-Delivery": delivery_id(release_id, epoch, target_id, event),
        "X-Fanout-Epoch": str(epoch),
    }
    if event == EVENT:
        headers["X-Fanout-Release"] = release_id
    else:
        headers["X-Fanout-Mirror"] = release_id.removeprefix(MIRROR_SUBJECT)
    if secret is not None:
        headers["X-Fanout-Signature-256"] = sign(secret, body)
    return headers


def post(client: httpx.Client, target: Target, body: bytes,
         headers: Mapping[str, str]) -> RegistryError | None:
    """POST once; None when the receiver took it (2xx), else the error, classified.

    The registry error tree has the classifier we want for a receiver too: 5xx, 408 and 429
    (with its ``Retry-After``), connection errors and timeouts are transient; the rest is not.
    """
    what = f"notification to {target.shown}"
    try:
        response = client.post(target.url, content=body, headers=dict(headers))
    except httpx.TransportError as exc:
        return error_from_transport(exc, what)
    if 200 <= response.status_code < 300:
        return None
    return error_from_response(response, what)


def reason_of(error: RegistryError, target: Target) -> str:
    """What went wrong, without the URL's path or query (``str(error)`` would quote them)."""
    text = error.message + (f" [HTTP {error.status}]" if error.status else "")
    text = text.replace(target.url, target.shown)
    path = urlsplit(target.url).path
    if len(path) > 1:
        text = text.replace(path, "/…")
    return text[:_REASON_MAX]


# -- one notification -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifyJob:
    """One notification: release ``release_id`` became final at ``epoch``; tell ``target``.

    A mirror's events (``event`` other than ``release.finished``) name ``mirror:<name>`` as
    ``release_id`` and its outage (when it began, in whole seconds) as ``epoch``."""

    release_id: str
    epoch: int
    target: str
    document: dict[str, Any]
    event: str = EVENT

    @property
    def task_id(self) -> str:
        tail = "" if self.event == EVENT else f":{self.event}"
        return f"notify:{self.release_id}:{self.epoch}:{self.target}{tail}"

    def to_kwargs(self) -> dict[str, Any]:
        kwargs = {"release_id": self.release_id, "epoch": self.epoch, "target": self.target,
                  "document": self.document}
        # Only when it is not the default: a release's message reads as it always has.
        if self.event != EVENT:
            kwargs["event"] = self.event
        return kwargs

    @classmethod
    def parse(cls, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> NotifyJob:
        """From a task message; ``ValueError`` saying what is wrong with it."""
        if args:
            raise ValueError("fanout.notify takes keyword arguments only")
        names = {"release_id", "epoch", "target", "document"}
        if set(kwargs) - {"event"} != names:
            raise ValueError(f"fanout.notify wants exactly {sorted(names)} (and optionally "
                             f"event), got {sorted(map(str, kwargs))}")
        release_id, epoch = kwargs["release_id"], kwargs["epoch"]
        target, document = kwargs["target"], kwargs["document"]
        event = kwargs.get("event", EVENT)
        if not (isinstance(release_id, str) and release_id and isinstance(target, str)
                and isinstance(epoch, int) and not isinstance(epoch, bool)
                and isinstance(document, dict) and event in EVENTS):
            raise ValueError("fanout.notify: malformed arguments")
        return cls(release_id, epoch, target, document, event)


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int = 200


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to do: delivered or given up before (a redelivered message), or not ours."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    countdown: float
    reason: str


@dataclass(frozen=True, slots=True)
class GaveUp:
    reason: str


NotifyOutcome = Delivered | Skipped | RetryLater | GaveUp


class DeliveryLog:
    """A key per (release, epoch, URL): ``sending <token>`` while a POST is under way (a
    lease), then ``delivered`` or ``failed`` for as long as the ledger keeps releases. A
    redelivered message finds it and does not POST again."""

    def __init__(self, client: redis.Redis[Any], *, retention: float) -> None:
        self._redis = client
        self.retention = retention

    @staticmethod
    def key(job: NotifyJob) -> str:
        tail = "" if job.event == EVENT else f":{job.event}"
        return f"{_KEY_PREFIX}{job.release_id}:{job.epoch}:{job.target}{tail}"

    def claim(self, key: str, lease: float) -> str | None:
        """A token when this delivery may POST now, else None (see :meth:`state`)."""
        token = secrets.token_hex(8)
        won = self._redis.set(key, f"sending {token}", nx=True, px=max(1, int(lease * 1000)))
        return token if won else None

    def state(self, key: str) -> str | None:
        value = self._redis.get(key)
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.split(" ", 1)[0]

    def finish(self, key: str, state: str) -> None:
        self._redis.set(key, state, ex=max(1, int(self.retention)))

    def release(self, key: str, token: str) -> None:
        """Give the claim back (a retry will want it), if it is still ours."""
        def apply(pipe: Any) -> None:
            value = pipe.get(key)
            ours = (value.decode() if isinstance(value, bytes) else value) == f"sending {token}"
            pipe.multi()
            if ours:
                pipe.delete(key)

        self._redis.transaction(apply, key)  # type: ignore[no-untyped-call]


class Notifier:
    """Delivers one notification against injected parts (settings, delivery log, transport)."""

    def __init__(self, settings: NotifySettings, deliveries: DeliveryLog, *,
                 transport: httpx.BaseTransport | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.transport = transport
        self._rand = rand

    @property
    def lease(self) -> float:
        # Longer than one POST can take (each phase has its timeout), so it never lapses
        # under a live one; short enough that a dead worker's claim soon frees.
        return 4 * self.settings.timeout + 10

    def deliver(self, job: NotifyJob, *, retries: int = 0) -> NotifyOutcome:
        """POST ``job`` unless it went out before; ``retries``: the task's retries so far."""
        target = self.settings.target(job.target)
        if target is None:
            reason = (f"{job.release_id}: no FANOUT_NOTIFY_URL with id {job.target} on this "
                      "worker (set the same URLs on every worker)")
            log.error("%s", reason)
            return GaveUp(reason)
        key = self.deliveries.key(job)
        token = self.deliveries.claim(key, self.lease)
        if token is None:
            state = self.deliveries.state(key)
            if state in ("delivered", "failed"):
                log.info("%s: notification to %s (epoch %d) already %s", job.release_id,
                         target.shown, job.epoch, state)
                return Skipped(f"already {state}")
            return RetryLater(self.lease, "another delivery of this notification is under way")
        body = body_for(job.document, self.settings.format, job.event)
        headers = headers_for(body, release_id=job.release_id, epoch=job.epoch,
                              target_id=target.id, secret=self.settings.secret,
                              event=job.event)
        with httpx.Client(transport=self.transport, timeout=self.settings.timeout,
                          follow_redirects=False) as client:
            error = post(client, target, body, headers)
        if error is None:
            self.deliveries.finish(key, "delivered")
            log.info("%s: notified %s (epoch %d, delivery %s)", job.release_id, target.shown,
                     job.epoch, headers["X-Fanout-Delivery"])
            return Delivered()
        return self._failed(job, target, key, token, error, attempts=retries + 1)

    def _failed(self, job: NotifyJob, target: Target, key: str, token: str,
                error: RegistryError, *, attempts: int) -> NotifyOutcome:
        reason = reason_of(error, target)
        policy = self.settings.policy
        if is_transient(error):
            give_up = policy.gives_up(attempts, 0.0)
            if give_up is None:
                countdown = policy.countdown(attempts, retry_after_of(error), rand=self._rand)
                self.deliveries.release(key, token)
                log.info("%s: notification to %s failed (%s); again in %.1fs", job.release_id,
                         target.shown, reason, countdown)
                return RetryLater(countdown, reason)
            reason = f"{reason} ({give_up})"
        self.deliveries.finish(key, "failed")
        log.warning("%s: notification to %s given up: %s", job.release_id, target.shown, reason)
        return GaveUp(reason)


# -- when a release becomes final -------------------------------------------------------------

SendNotify = Callable[[NotifyJob, str], None]


class Finals:
    """The runner's hook after a destination succeeds or fails for good: if that made the
    release final, claim the transition and send one notification per URL."""

    def __init__(self, ledger: Ledger, settings: NotifySettings, send: SendNotify, *,
                 by_registry: bool = False) -> None:
        self.ledger = ledger
        self.settings = settings
        self.send = send
        self.by_registry = by_registry

    def settle(self, release_id: str, destination: str) -> None:
        """Never raises: the copy's outcome is recorded already, whatever happens here."""
        try:
            self._settle(release_id, destination)
        except Exception as exc:  # noqa: BLE001 - a lost notification must not fail a copy
            log.error("%s: could not send the release-finished notification: %s: %s",
                      release_id, type(exc).__name__, str(exc)[:_REASON_MAX])

    def _settle(self, release_id: str, destination: str) -> None:
        settled = self.ledger.settle_final(release_id)
        if settled is None:
            return
        release = self._latest(settled)
        if not self.settings.wants(release.ok):
            log.info("%s finished ok; FANOUT_NOTIFY_ON=failure: no notification", release_id)
            return
        document = release_document(release)
        queue = self._queue(destination)
        for target in self.settings.targets:
            self.send(NotifyJob(release_id, settled.epoch, target.id, document), queue)
        log.info("%s finished (%s, epoch %d): notifying %d URL(s)", release_id,
                 "ok" if release.ok else "failed", settled.epoch, len(self.settings.targets))

    def _latest(self, settled: Release) -> Release:
        # settle_final reads without the attempts' history; the document has it, as
        # ``fanout status --json`` does. Unless the release moved on meanwhile (a retry).
        full = self.ledger.get(settled.id)
        if full is not None and full.epoch == settled.epoch and full.done:
            return full
        return settled

    def _queue(self, destination: str) -> str:
        # The queue of the copy that finished the release: a worker is known to serve it.
        try:
            return queue_for(destination, by_registry=self.by_registry)
        except ValueError:
            return DEFAULT_QUEUE


def result_of(outcome: NotifyOutcome) -> dict[str, Any]:
    """The task's return value (for Flower)."""
    if isinstance(outcome, Delivered):
        return {"state": "delivered"}
    if isinstance(outcome, Skipped):
        return {"state": "skipped", "reason": outcome.reason}
    return {"state": "failed", "reason": cast(GaveUp, outcome).reason}
