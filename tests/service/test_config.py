from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry.envconfig import ConfigError
from service.config import load_serve_config, parse_serve_config
from tests.support.serve import sha256_hex

SETS = {"destinations": {"release": ["quay.io/acme/app"]}}


def _token(**overrides: Any) -> dict[str, Any]:
    return {"name": "ci", "sha256": sha256_hex("t"), "sets": ["release"],
            "sources": ["ghcr.io/acme/*"], **overrides}


def test_tokens_rules_and_hooks_are_read() -> None:
    config = parse_serve_config({
        **SETS, "tokens": [_token()],
        "rules": [{"source": "Registry.Corp/acme/*", "tags": ["v*"], "to": "release"}],
        "hooks": {"dedup_seconds": 30, "github": {"secret_env": "GH_SECRET",
                                                  "registry": "GHCR.io"}},
    })
    [grant] = config.tokens
    assert grant.name == "ci" and grant.sets == ("release",)
    assert grant.may_use_set("release") and not grant.may_use_set("other")
    [rule] = config.rules
    assert (rule.source, rule.tags, rule.to) == ("registry.corp/acme/*", ("v*",), "release")
    assert config.dedup_seconds == 30
    assert config.hook("github").registry == "ghcr.io"
    assert config.hook("github").secret({"GH_SECRET": "s3"}) == "s3"
    assert config.hook("quay").secret({}) is None


@pytest.mark.parametrize(("document", "names"), [
    ({"tokens": [_token(sha256="the-token-itself")]}, "sha256 must be 64 hex digits"),
    ({"tokens": [_token(sets=["nope"])]}, "no destination set 'nope'"),
    ({"tokens": [_token(sources=["ghcr.io"])]}, "'ghcr.io' is not a host/path pattern"),
    ({"tokens": [_token(), _token()]}, "two [[tokens]] share a name"),
    ({"tokens": [_token(), _token(name="b")]}, "the same sha256"),
    ({"tokens": [_token(secret="x")]}, "unknown key(s) secret"),
    ({"tokens": {"name": "x"}}, "array of tables"),
    ({"rules": [{"source": "ghcr.io/a/*", "to": "nope"}]}, "no destination set 'nope'"),
    ({"rules": [{"source": "ghcr.io/a/*"}]}, "to must be a non-empty string"),
    ({"hooks": {"gitea": {}}}, "unknown hook kind 'gitea'"),
    ({"hooks": {"dedup_seconds": -1}}, "dedup_seconds"),
    ({"hooks": {"github": {"secret": "inline"}}}, "unknown key(s) secret"),
])
def test_bad_config_names_the_key(document: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_serve_config({**SETS, **document})
    assert names in str(caught.value)


def test_a_server_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "fanout.toml"
    path.write_text('[destinations]\nrelease = ["quay.io/acme/app"]\n')
    with pytest.raises(ConfigError, match="no \\[\\[tokens\\]\\]"):
        load_serve_config(path, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_serve_config(tmp_path / "missing.toml", {})


def test_producer_commands_accept_a_file_with_service_sections() -> None:
    from producer.config import parse_config
    config = parse_config({**SETS, "tokens": [_token()], "rules": [], "hooks": {}})
    assert config.destination_set("release") == ("quay.io/acme/app",)
