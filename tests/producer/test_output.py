"""producer.output: what `fanout copy` prints, optional destinations included."""

from __future__ import annotations

import io
import json

from producer.output import all_ok, print_results, results_json
from registry.errors import PermanentError
from registry.results import CopyResult

DIGEST = "sha256:" + "ab" * 32
OK = CopyResult("src.io/app@" + DIGEST, "a.io/app", DIGEST, ("v1",))
FAILED = CopyResult("src.io/app@" + DIGEST, "b.io/app", DIGEST, ("v1",),
                    error=PermanentError("denied"))


def test_an_optional_destination_may_fail() -> None:
    assert all_ok([OK, FAILED], {"b.io/app"})
    assert not all_ok([OK, FAILED])
    assert not all_ok([FAILED], {"b.io/app"})  # all optional: each counts


def test_the_output_marks_optional_destinations() -> None:
    out = io.StringIO()
    print_results([OK, FAILED], 1.0, out, {"b.io/app"})
    lines = out.getvalue().splitlines()

    assert lines[0].startswith("ok     a.io/app  ")
    assert lines[1].startswith("FAILED b.io/app (optional)  ") and "error: denied" in lines[1]
    assert lines[2].startswith("1 of 2 destinations succeeded (1 optional failed)")
    document = json.loads(results_json([OK, FAILED], 1.0, {"b.io/app"}))
    assert document["ok"] is True
    assert [(d["destination"], d["optional"]) for d in document["destinations"]] == [
        ("a.io/app", False), ("b.io/app", True)]
