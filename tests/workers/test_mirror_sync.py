"""workers/mirror_sync.py, the parts no registry decides: the no-overlap lease."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from workers.ledger import Ledger
from workers.mirror_model import Mirror, MirrorBusy, MirrorPlan
from workers.mirror_runs import MirrorRuns
from workers.mirror_sync import LOCK_PREFIX, sync_mirror
from workers.settings import WorkerSettings

MIRROR = Mirror("app", "src.example/app", ("dst.example/app",))


def _nothing_to_do(work: Any) -> MirrorPlan:
    return MirrorPlan("app", "src.example/app", {}, ())


def test_a_second_run_of_a_mirror_is_refused_while_the_first_holds_its_lease() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    ledger.client.set(LOCK_PREFIX + "app", "another-run", px=60_000)
    with pytest.raises(MirrorBusy, match="app"):
        sync_mirror(MIRROR, ledger=ledger, settings=WorkerSettings.from_env({}), env={},
                    trigger="cli", run=_nothing_to_do)
    assert MirrorRuns(ledger.client).last("app") is None
    # A dry run takes no lease (it writes nothing), so it runs beside the other.
    _, run = sync_mirror(MIRROR, ledger=ledger, settings=WorkerSettings.from_env({}),
                         env={}, trigger="cli", dry_run=True, run=_nothing_to_do)
    assert run.dry_run and run.ok


def test_a_run_frees_its_lease_and_records_itself() -> None:
    ledger = Ledger(fakeredis.FakeRedis())
    settings = WorkerSettings.from_env({})
    _, run = sync_mirror(MIRROR, ledger=ledger, settings=settings, env={}, trigger="cli",
                         run=_nothing_to_do)
    assert run.ok and run.releases == []
    assert ledger.client.get(LOCK_PREFIX + "app") is None
    last = MirrorRuns(ledger.client).last("app")
    assert last is not None and last.ok and last.trigger == "cli"
    # ... so the next run is not refused.
    sync_mirror(MIRROR, ledger=ledger, settings=settings, env={}, trigger="schedule",
                run=_nothing_to_do)
