"""producer.table: the status table people read."""

from __future__ import annotations

from producer.table import render
from workers.ledger import Attempt, DestinationRecord, Release

DIGEST = "sha256:" + "ab" * 32
NOW = 1_700_000_100.0


def record(destination: str, state: str, **fields: object) -> DestinationRecord:
    base: dict[str, object] = {
        "destination": destination, "tags": ("v1",), "state": state, "attempts": 0,
        "last_error": None, "error_type": None, "bytes": 0, "seconds": 0.0,
        "created_at": NOW - 100, "updated_at": NOW - 1, "started_at": None,
        "finished_at": None, "stats": {}, "worker": None, "next_retry_at": None,
    }
    base.update(fields)
    return DestinationRecord(**base)  # type: ignore[arg-type]


def release(*records: DestinationRecord) -> Release:
    return Release("rel-1", f"src.io/app@{DIGEST}", DIGEST, NOW - 100,
                   {r.destination: r for r in records})


def test_table_shows_every_column_per_destination() -> None:
    text = render(release(
        record("a.io/app", "succeeded", attempts=1, bytes=2_500_000, seconds=1.25,
               started_at=NOW - 10, finished_at=NOW - 8.75),
        record("b.io/app", "retrying", attempts=2, started_at=NOW - 5, next_retry_at=NOW + 30,
               last_error="connect refused (GET http://b.io/v2/)", error_type="ConnectionFailed"),
        record("c.io/app", "queued"),
        record("d.io/app", "running", attempts=1, started_at=NOW - 3),
    ), now=NOW)
    lines = text.splitlines()

    assert lines[0] == f"release rel-1  source src.io/app@{DIGEST}"
    header = lines[3]
    assert header.split() == ["DESTINATION", "STATE", "ATTEMPTS", "BYTES", "DURATION", "LAST",
                              "ERROR"]
    rows = {line.split()[0]: line for line in lines[4:8]}
    assert rows["a.io/app"].split()[1:5] == ["succeeded", "1", "2.5", "MB"]
    assert "1.2s" in rows["a.io/app"] or "1.3s" in rows["a.io/app"]
    assert "retrying (in 30s)" in rows["b.io/app"]
    assert rows["b.io/app"].endswith("ConnectionFailed: connect refused (GET http://b.io/v2/)")
    assert rows["c.io/app"].split()[1:] == ["queued", "0", "-", "-"]
    assert "3.0s" in rows["d.io/app"]
    # the columns line up: every row's STATE starts where the header's does
    column = header.index("STATE")
    assert all(row[column - 2:column] == "  " and row[column] != " " for row in rows.values())
    assert lines[-1] == "4 destinations: 1 succeeded, 1 retrying, 1 running, 1 queued"


def test_long_errors_are_cut_to_one_line() -> None:
    text = render(release(record("a.io/app", "failed", attempts=1,
                                 last_error="x\n" * 200, error_type="Denied")), now=NOW)
    row = text.splitlines()[4]

    assert row.endswith("…") and len(row) < 200
    assert text.splitlines()[-1] == "1 destination: 1 failed"


def test_every_attempt_is_shown_under_its_destination() -> None:
    history = (
        Attempt(1, "w1@h", NOW - 50, NOW - 49, "retrying", "503 from upstream", "ServerError"),
        Attempt(2, None, NOW - 40, NOW - 39.5, "failed", "denied", "Denied"),
        Attempt(3, "w2@h", NOW - 20, NOW - 18, "succeeded"),
    )
    text = render(release(
        record("a.io/app", "succeeded", attempts=3, history=history, round_base=2,
               round_at=NOW - 30, started_at=NOW - 20, finished_at=NOW - 18, seconds=2.0),
        record("b.io/app", "queued", optional=True),
    ), now=NOW)
    lines = text.splitlines()

    assert lines[4].startswith("a.io/app ")
    assert lines[5].strip().startswith("#1  w1@h  ")
    assert lines[5].endswith("(1.0s)  retrying  ServerError: 503 from upstream")
    assert lines[6].strip().startswith("#2  -  ") and lines[6].endswith("failed  Denied: denied")
    assert lines[7].strip().startswith("-- retried at ")
    assert lines[8].endswith("(2.0s)  succeeded")
    assert lines[9].startswith("b.io/app (optional)  queued")
    assert lines[-1] == "2 destinations (1 optional): 1 succeeded, 1 queued"


def test_tags_left_to_a_newer_release_are_shown_and_counted() -> None:
    text = render(release(
        record("a.io/app", "succeeded", attempts=1, tags=("v1", "latest"),
               superseded={"latest": "rel-9"}),
        record("b.io/app", "succeeded", attempts=1),
    ), now=NOW)
    lines = text.splitlines()

    row = next(i for i, line in enumerate(lines) if line.startswith("a.io/app"))
    assert lines[row + 1] == "    tag latest: superseded by rel-9"
    assert lines[-1] == "2 destinations: 2 succeeded, 1 tag superseded by newer releases"
