"""A server config with mirrors, and a stand-in for the sync (``sync_mirror`` is being written):
what the mirror API and page tests share."""

from __future__ import annotations

import dataclasses
from typing import Any

from producer.config import FanoutConfig
from service.config import ServeConfig, parse_serve_config
from tests.service.conftest import DOCUMENT
from tests.support.serve import sha256_hex
from workers.mirror_model import DestinationPlan, Mirror, MirrorBusy, MirrorPlan, MirrorRun

MIRROR_TOKEN = "mirror-token-5d1e"
DIGEST = "sha256:" + "b" * 64
NGINX = Mirror(name="nginx", source="docker.io/library/nginx",
               destinations=("mirror.example/acme/app",), to="mirrors", tags=("1.*",),
               every=3600.0, prune=True)
APP = Mirror(name="app", source="registry.corp/acme/app", destinations=("quay.io/acme/app",))
ELSEWHERE = Mirror(name="elsewhere", source="registry.corp/acme/app",
                   destinations=("quay.io/acme/app", "evil.example/app"))
MIRRORS = (NGINX, APP, ELSEWHERE)


@dataclasses.dataclass(frozen=True)
class _FanoutWithMirrors(FanoutConfig):
    # Until FanoutConfig reads [[mirrors]] itself (branch plan).
    mirrors: tuple[Mirror, ...] = ()


def with_mirrors(config: ServeConfig, mirrors: tuple[Mirror, ...] = MIRRORS) -> ServeConfig:
    fanout: Any = config.fanout
    if "mirrors" in {f.name for f in dataclasses.fields(FanoutConfig)}:
        fanout = dataclasses.replace(fanout, mirrors=mirrors)
    else:
        fanout = _FanoutWithMirrors(**{f.name: getattr(fanout, f.name)
                                       for f in dataclasses.fields(FanoutConfig)},
                                    mirrors=mirrors)
    return dataclasses.replace(config, fanout=fanout)


def mirror_config() -> ServeConfig:
    document = {**DOCUMENT, "tokens": [
        *DOCUMENT["tokens"],  # type: ignore[misc]
        {"name": "mirror-op", "sha256": sha256_hex(MIRROR_TOKEN), "sets": ["mirrors"],
         "sources": ["docker.io/library/*"]},
    ]}
    return with_mirrors(parse_serve_config(document))


def plan_of(mirror: Mirror) -> MirrorPlan:
    return MirrorPlan(mirror=mirror.name, source=mirror.source,
                      kept={"1.27": DIGEST, "1.26": DIGEST},
                      destinations=(DestinationPlan(destination=mirror.destinations[0],
                                                    add={"1.27": DIGEST}, in_sync=("1.26",),
                                                    prune=("0.9",)),))


class FakeSync:
    """Stands in for ``sync_mirror``: records its calls, answers a plan and a run, or raises."""

    def __init__(self, raises: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.raises = raises

    def __call__(self, mirror: Mirror, **kwargs: Any) -> tuple[MirrorPlan, MirrorRun]:
        self.calls.append({"mirror": mirror, **kwargs})
        if self.raises is not None:
            raise self.raises
        plan = plan_of(mirror)
        run = MirrorRun(mirror=mirror.name, trigger=kwargs["trigger"], started_at=1.0,
                        finished_at=2.0, ok=True, counts={**plan.counts(), "pruned": 1},
                        releases=() if kwargs["dry_run"] else ("rel-1",),
                        pruned={} if kwargs["dry_run"] else {mirror.destinations[0]: ("0.9",)},
                        dry_run=kwargs["dry_run"])
        return plan, run


BUSY = MirrorBusy("held by another run")
