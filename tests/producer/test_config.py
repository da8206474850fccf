"""producer.config: fanout.toml parsing and where destinations come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import FanoutConfig, load_config, parse_config, pick_destinations
from registry.envconfig import ConfigError

EXAMPLE = """
default = "release"

[destinations]
release = ["ghcr.io/acme/app", "quay.io/acme/app:stable"]
mirrors = "harbor.internal:8443/mirror/app, 127.0.0.1:5000/app"

[registries."harbor.internal:8443"]
insecure = true

[registries."ghcr.io"]
insecure = false
"""


def test_example_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text(EXAMPLE)

    config = load_config(path, {})

    assert config.destination_sets == {
        "release": ("ghcr.io/acme/app", "quay.io/acme/app:stable"),
        "mirrors": ("harbor.internal:8443/mirror/app", "127.0.0.1:5000/app"),
    }
    assert config.default_set == "release"
    assert config.insecure_registries == ["harbor.internal:8443"]
    assert config.destination_set(None) == config.destination_sets["release"]


def test_config_found_through_env_and_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere.toml").write_text('[destinations]\nx = ["a.io/x"]\n')
    monkeypatch.chdir(tmp_path)

    assert load_config(None, {}) == FanoutConfig()  # no ./fanout.toml: empty, no error
    from_env = load_config(None, {"FANOUT_CONFIG": str(tmp_path / "elsewhere.toml")})
    assert from_env.destination_sets == {"x": ("a.io/x",)}
    (tmp_path / "fanout.toml").write_text('[destinations]\ny = ["b.io/y"]\n')
    assert load_config(None, {}).destination_sets == {"y": ("b.io/y",)}


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("destinations = 3", r"\[destinations\] must be a table"),
        ("[destinations]\nx = 3", "destinations.x must be a list"),
        ("[destinations]\nx = []", "destinations.x is empty"),
        ('default = "y"\n[destinations]\nx = ["a.io/x"]', "names no set"),
        ("colour = 1", "unknown key"),
        ('[registries."a.io"]\nverify = false', "unknown option"),
        ('[registries."a.io"]\ninsecure = "yes"', "true or false"),
        ("[destinations\n", "fanout.toml"),
        ('[destinations]\nx = [{ to = "a.io/x", optinal = true }]', r"x\[0\]: unknown key"),
        ('[destinations]\nx = [{ optional = true }]', "to must be a repository"),
        ('[destinations]\nx = [{ to = "a.io/x", optional = "yes" }]', "true or false"),
        ("[destinations]\nx = [3]", r"x\[0\] must be a repository or a table"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


def test_unknown_set_lists_the_known_ones() -> None:
    config = parse_config({"destinations": {"a": ["x.io/a"], "b": ["x.io/b"]}})

    with pytest.raises(ConfigError, match=r"no destination set 'c'.*sets: a, b"):
        pick_destinations([], {}, config, "c")


def test_destination_precedence() -> None:
    config = parse_config({"default": "a", "destinations": {"a": ["x.io/a"], "b": ["x.io/b"]}})
    env = {"FANOUT_DESTINATIONS": "y.io/one, y.io/two"}

    assert pick_destinations(["z.io/arg"], env, config, None)[:2] == (["z.io/arg"], "arguments")
    assert pick_destinations([], env, config, "b")[:2] == (["x.io/b"], "set 'b'")
    assert pick_destinations([], env, config, None)[:2] == (
        ["y.io/one", "y.io/two"], "FANOUT_DESTINATIONS")
    assert pick_destinations([], {}, config, None)[0] == ["x.io/a"]
    assert pick_destinations([], {}, FanoutConfig(), None)[:2] == ([], "nowhere")
    with pytest.raises(ConfigError, match="not both"):
        pick_destinations(["z.io/arg"], {}, config, "b")


def test_a_set_entry_may_be_optional(tmp_path: Path) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text('default = "release"\n[destinations]\n'
                    'release = ["ghcr.io/acme/app",\n'
                    '           { to = "quay.io/acme/app:stable", optional = true },\n'
                    '           { to = "harbor.io/acme/app", optional = false }]\n'
                    'plain = "a.io/x, b.io/y"\n')

    config = load_config(path, {})

    assert config.destination_sets["release"] == (
        "ghcr.io/acme/app", "quay.io/acme/app:stable", "harbor.io/acme/app")
    assert config.optional_in("release") == {"quay.io/acme/app:stable"}
    assert config.optional_in("plain") == frozenset()
    picked = pick_destinations([], {}, config, None)
    assert picked.destinations == list(config.destination_sets["release"])
    assert picked.optional == {"quay.io/acme/app:stable"}
    assert pick_destinations([], {}, config, "plain").optional == frozenset()
    assert pick_destinations(["z.io/arg"], {}, config, None).optional == frozenset()
