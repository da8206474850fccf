"""``fanout verify``'s work, for the CLI, the service, Python callers and the scheduled verify
(``fanout.verify`` on the workers): is what the ledger says landed still there, and, with
``repair``, send again what is not.

In order: the releases are chosen and every refusal made from the ledger alone
(``verify_plan``); then the registries are asked, each distinct reference once
(``verify_heads``); then the tag owners are read, in one round trip; then each destination gets
its verdict (``verdicts``); the findings per registry are stored for the metrics exporter; and
the drifted destinations are sent again, release by release, through the path ``fanout retry``
takes (``resend``), so the workers' tag order rule decides every tag.

The core takes explicit objects (a ledger, the queue's settings, a way to run work on registry
clients); ``producer/verification.py`` builds them from a command's flags and environment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from registry.errors import InvalidReference
from registry.reference import Repository, parse_repository
from registry.retry import RetryPolicy
from registry.session import Registries

from . import retry_plan, verify_metrics, verify_plan
from .errors import UsageError
from .metrics import registry_of
from .queue_access import check_broker
from .resend import resend
from .tag_order import TagOwners
from .verdicts import NOT_LANDED, UNREACHABLE, Report, Verdict, classify, not_landed, tags_of
from .verify_heads import DEFAULT_CONCURRENCY, VERIFY_RETRY, Answer, Heads, Key

if TYPE_CHECKING:
    from .ledger import Ledger
    from .records import DestinationRecord, Release
    from .settings import WorkerSettings
    from .tag_order import TagOwner
    from .verify_plan import Target

log = logging.getLogger("fanout.verify")

Checks = Callable[[Registries], Coroutine[Any, Any, list[Verdict]]]
# Runs the checks on registry clients: a pool of the run's own, fanout serve's long-lived pool,
# or a worker's engine pool. Given the retry policy the requests should have.
RunChecks = Callable[[Checks, RetryPolicy], list[Verdict]]


def verify(
    ledger: Ledger, settings: WorkerSettings, run: RunChecks,
    release_ids: Sequence[str] = (), *,
    since: float | None = None,
    only: Collection[str] | None = None,
    source_repo: str | None = None,
    repair: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: RetryPolicy = VERIFY_RETRY,
    clock: Callable[[], float] = time.time,
) -> Report:
    """Verify the named releases (or those created in the last ``since`` seconds); ``only``:
    just these destination repositories; ``source_repo``: just releases from it.

    Bad input (an unknown release, ``repair`` of a named release still under way, a broker
    that is down when repairing) raises a ``UsageError`` before any registry is contacted.
    ``settings``: where a repair is sent."""
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, not {concurrency}")
    targets = verify_plan.select(ledger, release_ids,
                                 None if since is None else clock() - since,
                                 source_repo=source_repo, only=only)
    held = verify_plan.hold_back(targets, named=bool(release_ids)) if repair else {}
    if repair and targets:
        check_broker(settings.broker_url, settings)  # a repair that cannot be sent: say so now

    # Only read here: the ttl is for the workers' writes.
    owners = TagOwners(ledger.client, ttl=1)

    async def checks(registries: Registries) -> list[Verdict]:
        heads = Heads(registries, concurrency=concurrency, retry=retry)
        return await check(targets, heads, owners.get_many)

    verdicts = run(checks, retry) if targets else []
    report = Report(verdicts, checked_at=clock(), held=held)
    _store_findings(ledger.client, verdicts, report.checked_at)
    if repair:
        _repair(ledger, settings, report)
    return report


async def check(targets: Sequence[Target], heads: Heads,
                owners_of: Callable[[list[Key]], list[TagOwner | None]]) -> list[Verdict]:
    """A verdict per destination of ``targets``, in order (``owners_of``: the tag owners of
    (repository, tag) pairs, read at once)."""
    landed: list[tuple[Release, DestinationRecord, Repository | None]] = []
    verdicts: list[Verdict | None] = []
    for target in targets:
        for name in target.destinations:
            record = target.release.destinations[name]
            if record.state != "succeeded":
                verdicts.append(not_landed(target.release, record))
                continue
            landed.append((target.release, record, _repository(record.destination)))
            verdicts.append(None)
    places = [(rel, rec, repo) for rel, rec, repo in landed if repo is not None]
    answers = await heads.ask(
        [(repo, tag) for _, rec, repo in places for tag in tags_of(rec)],
        [(repo, rel.digest) for rel, _, repo in places])
    # Read after the HEADs: a newer release that wrote a tag while they ran has recorded
    # itself by now, so its write is not taken for a hand's.
    pairs = sorted({(str(repo), tag) for _, rec, repo in places for tag in tags_of(rec)})
    owners = dict(zip(pairs, await asyncio.to_thread(owners_of, pairs), strict=True))
    found = iter([_verdict(rel, rec, repo, answers, owners) for rel, rec, repo in landed])
    return [v if v is not None else next(found) for v in verdicts]


def _verdict(release: Release, record: DestinationRecord, repository: Repository | None,
             answers: Mapping[Key, Answer], owners: Mapping[Key, TagOwner | None]) -> Verdict:
    if repository is None:
        return Verdict(release.id, record.destination, release.digest, UNREACHABLE,
                       "the ledger's destination is not a repository; not checked",
                       optional=record.optional)
    return classify(release, record, str(repository), answers, owners)


def _repository(name: str) -> Repository | None:
    try:
        return parse_repository(name)
    except InvalidReference:
        return None


def _store_findings(client: redis.Redis[Any], verdicts: Sequence[Verdict], at: float) -> None:
    findings: dict[str, verify_metrics.RegistryFindings] = {}
    for verdict in verdicts:
        if verdict.state == NOT_LANDED:
            continue
        tally = findings.setdefault(registry_of(verdict.destination),
                                    verify_metrics.RegistryFindings())
        tally.checked += 1
        tally.drift += verdict.drift
        tally.unreachable += verdict.state == UNREACHABLE
    try:
        verify_metrics.record(client, findings, at)
    except redis.RedisError as exc:
        # The verification itself stands; only the exporter's numbers are older.
        log.warning("could not store the verification's findings for the metrics: %s", exc)


def _repair(ledger: Ledger, settings: WorkerSettings, report: Report) -> None:
    """Send each release's drifted destinations again, read afresh from the ledger: one
    retried by someone else since it was checked is left to that retry."""
    drifted: dict[str, list[str]] = {}
    for verdict in report.verdicts:
        if verdict.drift and verdict.release not in report.held:
            drifted.setdefault(verdict.release, []).append(verdict.destination)
    for release_id, names in drifted.items():
        release = ledger.get(release_id)
        if release is None:
            report.held[release_id] = "gone from the ledger since it was checked"
            continue
        try:
            names = retry_plan.pick(release, names)
        except retry_plan.RetryRefused as exc:
            report.held[release_id] = str(exc)
            continue
        report.repaired[release_id] = resend(ledger, settings, release, names)
