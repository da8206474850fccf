"""Release.from_document: a release read back from its JSON document, as `fanout serve` answers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import fakeredis
import pytest

from workers.ledger import Ledger
from workers.records import DocumentError, Release
from workers.release_document import release_document

SOURCE = "src.example/app@sha256:" + "ab" * 32


def _release_with_history() -> Release:
    ledger = Ledger(fakeredis.FakeRedis())
    release_id = ledger.create_release(SOURCE, [("a.io/app", ("v1",)), ("b.io/app", ())],
                                       optional=frozenset({"b.io/app"}))
    ledger.mark_running(release_id, "a.io/app", worker="w1")
    ledger.mark_retrying(release_id, "a.io/app", error="HTTP 503", error_type="ServerError",
                         next_retry_at=2e9)
    ledger.mark_running(release_id, "a.io/app", worker="w2")
    ledger.mark_succeeded(release_id, "a.io/app", stats={"bytes_transferred": 42}, seconds=1.5)
    ledger.mark_running(release_id, "b.io/app", worker="w1")
    ledger.mark_failed(release_id, "b.io/app", error="denied", error_type="Denied")
    release = ledger.get(release_id)
    assert release is not None
    return release


def test_a_document_read_back_is_the_release() -> None:
    release = _release_with_history()
    # Through JSON, as it crosses the wire; the epoch is the ledger's own, not in the document.
    document = json.loads(json.dumps(release_document(release)))

    again = Release.from_document(document)

    assert again == dataclasses.replace(release, epoch=0)
    assert len(again.destinations["a.io/app"].history) == 2
    assert release_document(again) == document


def test_keys_it_does_not_know_are_ignored_and_defaulted_ones_may_be_missing() -> None:
    document = release_document(_release_with_history())
    document["shiny_new_field"] = {"x": 1}
    record = document["destinations"]["a.io/app"]
    record["also_new"] = 1
    for key in ("optional", "generation", "round_base", "round_at", "heartbeat_at", "history"):
        del record[key]

    again = Release.from_document(document).destinations["a.io/app"]

    assert (again.optional, again.generation, again.history) == (False, 0, ())


@pytest.mark.parametrize(("path", "value", "message"), [
    (("digest",), None, "release rel-.*: 'digest' is missing"),
    (("destinations", "a.io/app", "attempts"), None,
     r"destinations\.a\.io/app: 'attempts' is missing"),
    (("destinations", "a.io/app", "attempts"), "3",
     r"destinations\.a\.io/app\.attempts: expected a number, got '3'"),
    (("destinations", "a.io/app", "attempts"), True, r"\.attempts: expected a number, got True"),
    (("destinations", "a.io/app", "tags"), ["v1", 2], r"\.tags\[1\]: expected a string, got 2"),
    (("destinations", "a.io/app", "stats"), {"blobs": "x"}, r"\.stats\.blobs: expected a number"),
    (("destinations", "a.io/app", "history"), [{"attempt": 1}],
     r"\.history\[0\]: 'worker' is missing"),
    (("destinations", "b.io/app"), [], r"destinations\.b\.io/app: expected an object"),
    (("created_at",), "yesterday", r"\.created_at: expected a number, got 'yesterday'"),
])
def test_a_missing_or_mistyped_field_is_named(path: tuple[str, ...], value: Any,
                                              message: str) -> None:
    document = release_document(_release_with_history())
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value

    with pytest.raises(DocumentError, match=message):
        Release.from_document(document)


def test_not_an_object_at_all() -> None:
    with pytest.raises(DocumentError, match=r"release: expected an object, got \[\]"):
        Release.from_document([])
