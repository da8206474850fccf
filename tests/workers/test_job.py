from __future__ import annotations

from typing import Any

import pytest

from workers.job import CopyJob, JobError, parse_job

DIGEST = "sha256:" + "c" * 64
GOOD: dict[str, Any] = {
    "release_id": "rel-1", "source": f"src.example/app@{DIGEST}",
    "destination": "dst.example/app", "tags": ["v1", "v1", "latest"],
}


def test_a_good_message() -> None:
    job = parse_job((), {**GOOD, "referrers": {"enabled": False, "types": ["t"]}})
    assert job == CopyJob("rel-1", f"src.example/app@{DIGEST}", "dst.example/app", DIGEST,
                          ("v1", "latest"), referrers=False, referrer_types=("t",))
    assert parse_job((), GOOD).referrers is True


def test_a_source_with_tag_and_digest_is_pinned_to_the_digest() -> None:
    job = parse_job((), {**GOOD, "source": f"src.example/app:v1@{DIGEST}"})
    assert job.source == f"src.example/app@{DIGEST}"


@pytest.mark.parametrize(("change", "reason"), [
    ({"source": "src.example/app:v1"}, "not pinned by digest"),
    ({"source": "src.example/app"}, "not pinned by digest"),
    ({"source": 42}, "source must be"),
    ({"destination": "dst.example/app:v2"}, "cannot carry a tag"),
    ({"tags": "v1"}, "tags must be a list"),
    ({"tags": ["bad tag"]}, "tag"),
    ({"release_id": ""}, "release_id"),
    ({"referrers": True}, "referrers must be"),
    ({"referrers": {"enabled": "yes"}}, "referrers.enabled"),
    ({"password": "hunter2"}, "unexpected arguments 'password'"),
])
def test_bad_messages(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobError, match=reason) as caught:
        parse_job((), {**GOOD, **change})
    assert "hunter2" not in str(caught.value)


def test_what_could_be_read_is_kept_for_the_ledger() -> None:
    with pytest.raises(JobError) as caught:
        parse_job((), {**GOOD, "source": "src.example/app:v1"})
    assert (caught.value.release_id, caught.value.destination) == ("rel-1", "dst.example/app")
    with pytest.raises(JobError, match="missing destination, tags") as missing:
        parse_job((), {"release_id": "rel-1", "source": GOOD["source"]})
    assert (missing.value.release_id, missing.value.destination) == ("rel-1", None)


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(JobError, match="keyword arguments only"):
        parse_job(("rel-1",), GOOD)
