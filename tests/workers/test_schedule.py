"""workers/schedule.py: beat's entries from fanout.toml's mirrors and [verify]."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from registry.envconfig import ConfigError
from workers import schedule
from workers.mirror_model import Mirror, VerifySchedule


@dataclass(frozen=True)
class FakeConfig:
    """What the schedule reads of a FanoutConfig."""

    mirrors: tuple[Mirror, ...] = ()
    verify: VerifySchedule | None = None


NGINX = Mirror(name="nginx", source="docker.io/library/nginx",
               destinations=("harbor.example/mirror/nginx",), tags=("1.*",), every=3600.0)
ON_DEMAND = Mirror(name="by-hand", source="docker.io/library/redis",
                   destinations=("harbor.example/mirror/redis",))


def test_a_mirror_with_every_is_an_entry_carrying_its_definition() -> None:
    entries = schedule.build(FakeConfig(mirrors=(NGINX, ON_DEMAND)))
    assert list(entries) == ["sync:nginx"]  # the one without `every` is on demand only
    entry = entries["sync:nginx"]
    assert entry["task"] == "fanout.sync"
    assert entry["schedule"] == timedelta(hours=1)
    assert entry["kwargs"] == {"name": "nginx", "mirror": NGINX.to_json(), "trigger": "schedule"}
    assert Mirror.from_json(entry["kwargs"]["mirror"]) == NGINX
    # A backlog after an outage expires instead of running the mirror again and again.
    assert entry["options"] == {"expires": 3600.0, "queue": "fanout"}


def test_verify_is_an_entry_of_its_own() -> None:
    entries = schedule.build(FakeConfig(verify=VerifySchedule(every=21600.0, since=604800.0,
                                                              repair=True)))
    assert entries == {"verify": {
        "task": "fanout.verify", "schedule": timedelta(hours=6),
        "kwargs": {"since": 604800.0, "repair": True},
        "options": {"expires": 21600.0, "queue": "fanout"}}}


def test_no_config_is_an_empty_schedule() -> None:
    assert schedule.build(FakeConfig()) == {}


def test_load_reads_the_file_the_environment_names() -> None:
    seen: list[tuple[str | None, Mapping[str, str]]] = []

    def loader(path: str | None, env: Mapping[str, str]) -> FakeConfig:
        seen.append((path, env))
        return FakeConfig(mirrors=(NGINX,))

    env = {"FANOUT_CONFIG": "/etc/fanout/fanout.toml"}
    assert list(schedule.load(env, loader)) == ["sync:nginx"]
    assert seen == [(None, env)]  # the loader's own rule: FANOUT_CONFIG, else ./fanout.toml


def test_a_bad_config_fails_naming_the_key() -> None:
    def loader(path: str | None, env: Mapping[str, str]) -> Any:
        raise ConfigError("fanout.toml: mirrors[0] (nginx): every: bad duration '1 hour'")

    with pytest.raises(ConfigError, match=r"every: bad duration"):
        schedule.load({}, loader)


def test_beat_sets_the_schedule_as_it_starts(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Any) -> None:
    from workers.app import app

    monkeypatch.setattr(schedule, "load_config",
                        lambda path, env: FakeConfig(mirrors=(NGINX,)))
    before = app.conf.beat_schedule
    scheduler = schedule.ConfiguredScheduler(app, schedule_filename=str(tmp_path / "beat"))
    try:
        # Celery's own default entry (a result backend's cleanup) is not added: no results.
        assert set(scheduler.schedule) == {"sync:nginx"}
        assert scheduler.schedule["sync:nginx"].options["expires"] == 3600.0
        assert app.conf.beat_schedule["sync:nginx"]["kwargs"]["name"] == "nginx"
    finally:
        scheduler.close()
        app.conf.beat_schedule = before


def test_beat_with_a_bad_config_does_not_start(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    from workers.app import app

    def bad(path: str | None, env: Mapping[str, str]) -> Any:
        raise ConfigError("fanout.toml: verify: since is required")

    monkeypatch.setattr(schedule, "load_config", bad)
    with pytest.raises(ConfigError, match="verify: since"):
        schedule.ConfiguredScheduler(app, schedule_filename=str(tmp_path / "beat"))


def test_the_app_uses_the_configured_scheduler() -> None:
    from workers.app import app

    assert app.conf.beat_scheduler == "workers.schedule:ConfiguredScheduler"


def test_the_real_file_gives_the_entries(tmp_path: Any) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text('[[mirrors]]\nname = "nginx"\nsource = "docker.io/library/nginx"\n'
                    'destinations = ["harbor.example/mirror/nginx"]\nevery = "1h"\n\n'
                    '[verify]\nevery = "6h"\nsince = "7d"\n')
    entries = schedule.load({"FANOUT_CONFIG": str(path)})
    assert set(entries) == {"sync:nginx", "verify"}
    assert entries["sync:nginx"]["options"]["expires"] == 3600.0
    assert entries["verify"]["kwargs"] == {"since": 7 * 86400.0, "repair": False}


def test_a_bad_real_file_names_the_key(tmp_path: Any) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text('[verify]\nevery = "6h"\nsince = "7d"\nrepiar = true\n')
    with pytest.raises(ConfigError, match="repiar"):
        schedule.load({"FANOUT_CONFIG": str(path)})


def test_no_file_is_an_empty_schedule(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./fanout.toml here, and no FANOUT_CONFIG
    assert schedule.load({}) == {}
