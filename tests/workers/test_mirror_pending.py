"""workers/mirror_pending.py: a mirror's unfinished releases are pending; final ones forgotten."""

from __future__ import annotations

import fakeredis
import pytest

from workers import mirror_pending
from workers.ledger import Ledger

A = "src.example/app@sha256:" + "a" * 64
B = "src.example/app@sha256:" + "b" * 64


@pytest.mark.parametrize("decode", [False, True])
def test_unfinished_destinations_are_pending_and_final_releases_forgotten(decode: bool) -> None:
    ledger = Ledger(fakeredis.FakeRedis(decode_responses=decode))
    running = ledger.create_release(A, [("one.example/app", ["1.0", "1.1"]),
                                        ("two.example/app", ["1.0"])])
    done = ledger.create_release(B, [("one.example/app", ["2.0"])])
    ledger.mark_succeeded(running, "two.example/app", stats={}, seconds=1.0)
    ledger.mark_failed(done, "one.example/app", error="boom", error_type="Denied")
    mirror_pending.add(ledger, "app", [running, done])

    assert mirror_pending.in_flight(ledger, "app") == {
        "one.example/app": {"1.0": "sha256:" + "a" * 64, "1.1": "sha256:" + "a" * 64}}
    # The failed release is final: forgotten, so the next run plans its tag again.
    assert {str(m if isinstance(m, str) else m.decode())
            for m in ledger.client.smembers("fanout:mirror:app:releases")} == {running}

    ledger.mark_succeeded(running, "one.example/app", stats={}, seconds=1.0)
    assert mirror_pending.in_flight(ledger, "app") == {}
    assert mirror_pending.in_flight(ledger, "other") == {}
