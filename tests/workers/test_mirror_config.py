"""workers.mirror_config: [[mirrors]] and [verify] of fanout.toml, through load_config."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.envconfig import ConfigError
from workers.config_file import FanoutConfig, load_config, parse_config
from workers.mirror_model import Mirror, VerifySchedule

EXAMPLE = """
[destinations]
mirrors = ["harbor.internal:8443/mirror/nginx",
           { to = "registry.airgap.example/nginx", optional = true }]
release = ["ghcr.io/acme/app", "quay.io/acme/app:stable"]

[[mirrors]]
name = "nginx"
source = "docker.io/library/nginx"
tags = ["1.*", "stable"]
exclude = ["*-rc*", "*-perl"]
versions = ">=1.25, <2"
newest = 5
to = "mirrors"
every = "1h"
prune = true
prune_limit = 3

[[mirrors]]
name = "alpine-2"
source = "alpine"
destinations = ["ghcr.io/acme/alpine", "quay.io/acme/alpine"]

[verify]
every = "6h"
since = "7d"
repair = true
"""


def test_the_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text(EXAMPLE)

    config = load_config(path, {})

    assert config.mirrors == (
        Mirror(name="nginx", source="docker.io/library/nginx",
               destinations=("harbor.internal:8443/mirror/nginx",
                             "registry.airgap.example/nginx"),
               to="mirrors", optional=frozenset({"registry.airgap.example/nginx"}),
               tags=("1.*", "stable"), exclude=("*-rc*", "*-perl"), versions=">=1.25, <2",
               newest=5, every=3600.0, prune=True, prune_limit=3),
        Mirror(name="alpine-2", source="docker.io/library/alpine",  # a bare name: Docker Hub
               destinations=("ghcr.io/acme/alpine", "quay.io/acme/alpine")),
    )
    assert config.verify == VerifySchedule(every=6 * 3600.0, since=7 * 86400.0, repair=True)
    assert config.mirror("alpine-2") is config.mirrors[1]
    with pytest.raises(ConfigError, match=r"no mirror 'x' in .*mirrors: nginx, alpine-2"):
        config.mirror("x")


def test_without_mirrors_or_verify() -> None:
    config = parse_config({"destinations": {"a": ["x.io/a"]}})
    assert config.mirrors == () and config.verify is None
    assert FanoutConfig().mirrors == ()
    with pytest.raises(ConfigError, match=r"no mirror 'x' \(mirrors: none\)"):
        config.mirror("x")


def test_names_and_repositories_are_normalised() -> None:
    config = parse_config({
        "destinations": {"s": ["Harbor.Internal:08443/m/app", "nginx"]},
        "mirrors": [{"name": "a", "source": "library/busybox", "to": "s"},
                    {"name": "b", "source": "index.docker.io/acme/x", "destinations": ["y"]}],
        "verify": {"every": "30s", "since": "15m"},
    })
    assert config.mirrors[0].destinations == ("harbor.internal:8443/m/app",
                                              "docker.io/library/nginx")
    assert config.mirrors[0].source == "docker.io/library/busybox"
    assert config.mirrors[1].source == "docker.io/acme/x"
    assert config.mirrors[1].to is None and config.mirrors[1].optional == frozenset()
    assert config.verify == VerifySchedule(30.0, 900.0, repair=False)


def _mirror(**keys: object) -> dict[str, object]:
    return {"name": "m", "source": "src.io/app", "destinations": ["dst.io/app"], **keys}


SETS = {"s": ["a.io/app"], "tagged": ["a.io/app:stable"]}

BAD_MIRRORS = [
    # (the [[mirrors]] entry, what the message must say: the key named)
    (_mirror(colour="red"), r"mirrors\[0\] \(m\): unknown key\(s\) colour"),
    (_mirror(name="Nginx"), r"mirrors\[0\]: name must be .*\[a-z0-9-\]\+.*'Nginx'"),
    (_mirror(name="a_b"), r"mirrors\[0\]: name must be"),
    (_mirror(name=""), r"mirrors\[0\]: name must be"),
    (_mirror(name=3), r"mirrors\[0\]: name must be"),
    ({"source": "a.io/x", "to": "s"}, r"mirrors\[0\]: name must be .*None"),
    (_mirror(source="src.io/app:1.25"), r"\(m\): source: .*cannot carry a tag"),
    (_mirror(source="src.io/app@sha256:" + "a" * 64), r"\(m\): source: .*cannot carry a digest"),
    (_mirror(source="src.io/App"), r"\(m\): source: invalid repository"),
    (_mirror(source=""), r"\(m\): source must be a repository"),
    ({"name": "m", "destinations": ["a.io/x"]}, r"\(m\): source must be a repository"),
    (_mirror(source=["src.io/app"]), r"\(m\): source must be a repository"),
    (_mirror(destinations=["dst.io/app:v1"]), r"\(m\): destinations\[0\]: .*cannot carry a tag"),
    (_mirror(destinations=["dst.io/app@sha256:" + "b" * 64]),
     r"destinations\[0\]: .*cannot carry a digest"),
    (_mirror(destinations=[]), r"\(m\): destinations must be a non-empty list"),
    (_mirror(destinations="dst.io/app"), r"\(m\): destinations must be a non-empty list"),
    (_mirror(destinations=[3]), r"\(m\): destinations must be a non-empty list"),
    (_mirror(destinations=["a.io/x", "a.io/x"]), r"\(m\): destinations: a.io/x is named twice"),
    (_mirror(destinations=["src.io/app"]), r"\(m\): destinations: src.io/app is the source"),
    (_mirror(to="s"), r"\(m\): give to = .* not both"),
    ({"name": "m", "source": "src.io/app"}, r"\(m\): give to = .* one of them"),
    ({"name": "m", "source": "src.io/app", "to": "nope"},
     r"\(m\): to: no destination set 'nope' in \[destinations\] \(sets: s, tagged\)"),
    ({"name": "m", "source": "src.io/app", "to": 3}, r"\(m\): to must name a set"),
    ({"name": "m", "source": "src.io/app", "to": "tagged"},
     r"\(m\): to: set 'tagged': .*cannot carry a tag"),
    ({"name": "m", "source": "a.io/app", "to": "s"}, r"\(m\): to: a.io/app is the source"),
    (_mirror(tags="1.*"), r"\(m\): tags must be a list of globs"),
    (_mirror(tags=[1]), r"\(m\): tags must be a list of globs"),
    (_mirror(tags=[""]), r"\(m\): tags: an empty glob"),
    (_mirror(tags=["1.[0-9"]), r"\(m\): tags: glob '1.\[0-9' has a '\[' that is never closed"),
    (_mirror(exclude=["*]"]), r"\(m\): exclude: glob '\*\]' has a '\]' that closes no"),
    (_mirror(exclude=["^1\\.2"]), r"\(m\): exclude: glob .* holds characters no tag has"),
    (_mirror(tags=["v1 *"]), r"\(m\): tags: glob 'v1 \*' holds characters"),
    (_mirror(versions=">=1.25; <2"), r"\(m\): versions: bad version range '>=1.25; <2'"),
    (_mirror(versions="1.25"), r"\(m\): versions: bad version range"),
    (_mirror(versions=">=1.x"), r"\(m\): versions: bad version range"),
    (_mirror(versions=""), r"\(m\): versions: an empty version range"),
    (_mirror(versions=1.25), r"\(m\): versions must be a string"),
    (_mirror(newest=0), r"\(m\): newest must be a whole number, 1 or more, not 0"),
    (_mirror(newest=-1), r"\(m\): newest must be a whole number"),
    (_mirror(newest="5"), r"\(m\): newest must be a whole number"),
    (_mirror(newest=True), r"\(m\): newest must be a whole number"),
    (_mirror(newest=2.5), r"\(m\): newest must be a whole number"),
    (_mirror(prune_limit=0), r"\(m\): prune_limit must be a whole number, 1 or more"),
    (_mirror(prune_limit="2"), r"\(m\): prune_limit must be a whole number"),
    (_mirror(prune="yes"), r"\(m\): prune must be true or false"),
    (_mirror(every="1x"), r"\(m\): every: bad duration '1x'"),
    (_mirror(every="0s"), r"\(m\): every: bad duration '0s': must be more than zero"),
    (_mirror(every=3600), r"\(m\): every must be a duration such as"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_MIRRORS)
def test_a_bad_mirror_names_its_key(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"destinations": SETS, "mirrors": [entry]}, Path("fanout.toml"))


def test_every_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text('[[mirrors]]\nname = "m"\nsource = "a.io/x"\nto = "nope"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: mirrors\[0\] \(m\): to: no destination"):
        load_config(path, {})


def test_two_mirrors_with_one_name() -> None:
    with pytest.raises(ConfigError, match=r"mirrors\[1\]: name: two mirrors are called 'm'"):
        parse_config({"mirrors": [_mirror(), _mirror()]})


@pytest.mark.parametrize(("value", "message"), [
    ({"name": "m"}, r"mirrors must be an array of tables"),
    ([3], r"mirrors must be an array of tables"),
])
def test_mirrors_must_be_tables(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"mirrors": value})


@pytest.mark.parametrize(("verify", "message"), [
    ("6h", r"verify must be a table"),
    ({"every": "6h", "since": "7d", "repiar": True}, r"verify: unknown key\(s\) repiar"),
    ({"since": "7d"}, r"verify: every is required"),
    ({"every": "6h"}, r"verify: since is required"),
    ({"every": "6 hours", "since": "7d"}, r"verify: every: bad duration '6 hours'"),
    ({"every": "6h", "since": 7}, r"verify: since must be a duration"),
    ({"every": "6h", "since": "7d", "repair": "yes"}, r"verify: repair must be true or false"),
])
def test_a_bad_verify_names_its_key(verify: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"verify": verify})


def test_the_service_still_reads_a_file_with_mirrors(tmp_path: Path) -> None:
    from service.config import load_serve_config

    path = tmp_path / "fanout.toml"
    path.write_text(EXAMPLE + '\n[[tokens]]\nname = "ci"\nsha256 = "' + "a" * 64 +
                    '"\nsets = ["release"]\n')
    config = load_serve_config(path, {})
    assert [m.name for m in config.fanout.mirrors] == ["nginx", "alpine-2"]


def test_the_producer_names_are_the_same() -> None:
    import producer.config
    import workers.config_file

    assert producer.config.FanoutConfig is workers.config_file.FanoutConfig
    assert producer.config.load_config is workers.config_file.load_config
    assert producer.config.parse_config is workers.config_file.parse_config
