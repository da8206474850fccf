from __future__ import annotations

import pytest

from registry.errors import InvalidReference
from workers.routing import queue_for


def test_one_queue_unless_routing_by_registry() -> None:
    assert queue_for("ghcr.io/org/app", by_registry=False) == "fanout"
    assert queue_for("ghcr.io/org/app", by_registry=True) == "fanout.ghcr.io"


def test_port_and_docker_hub_names() -> None:
    assert queue_for("127.0.0.1:5000/a/b", by_registry=True) == "fanout.127.0.0.1_5000"
    assert queue_for("library/alpine", by_registry=True) == "fanout.docker.io"


def test_a_bad_destination_is_refused() -> None:
    with pytest.raises(InvalidReference):
        queue_for("ghcr.io/org/app:tag", by_registry=True)
