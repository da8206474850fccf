"""registry.credentials: Docker config parsing, credential helpers, overrides, redaction."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from registry.credentials import (
    ChainCredentials,
    Credential,
    DockerConfigCredentials,
    StaticCredentials,
    SubprocessHelperRunner,
    default_store,
    normalize_registry,
)
from registry.errors import CredentialError

SECRET = "s3cr3t-Hunter2-do-not-leak"

# A fake docker-credential helper: answers from store.json next to it and logs every call, so tests
# see what server URL and environment a real helper would get.
FAKE_HELPER = f"""#!{sys.executable}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
assert sys.argv[1:] == ["get"], sys.argv
url = sys.stdin.read()
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(json.dumps({{"url": url, "mark": os.environ.get("FAKE_MARK")}}) + "\\n")
with open(os.path.join(here, "store.json")) as f:
    store = json.load(f)
entry = store.get(url)
if entry is None:
    print("credentials not found in native keychain")
    sys.exit(1)
if entry.get("fail"):
    print("boom: " + entry["Secret"])
    print("boom: " + entry["Secret"], file=sys.stderr)
    sys.exit(3)
if entry.get("garbage"):
    print("not json " + entry["Secret"])
    sys.exit(0)
print(json.dumps({{"ServerURL": url, "Username": entry["Username"], "Secret": entry["Secret"]}}))
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def assert_no_secret(exc: BaseException) -> None:
    """Neither the error nor anything chained to it may carry the secret."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            assert SECRET not in text
        if isinstance(seen, CredentialError):
            assert SECRET not in json.dumps(seen.to_dict())
        seen = seen.__cause__ or seen.__context__


class FakeHelper:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.env = {"PATH": str(bin_dir), "FAKE_MARK": "from-test-env"}
        script = bin_dir / "docker-credential-fake"
        script.write_text(FAKE_HELPER)
        script.chmod(0o755)
        self.set_store({})

    def set_store(self, entries: dict[str, dict[str, Any]]) -> None:
        (self.bin_dir / "store.json").write_text(json.dumps(entries))

    def calls(self) -> list[dict[str, Any]]:
        log = self.bin_dir / "calls.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def store_for(self, config: dict[str, Any], tmp_path: Path) -> DockerConfigCredentials:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        return DockerConfigCredentials.load(path, env=self.env)


@pytest.fixture
def helper(tmp_path: Path) -> FakeHelper:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return FakeHelper(bin_dir)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("https://ghcr.io", "ghcr.io"),
    ("GHCR.io", "ghcr.io"),
    ("http://localhost:5000/v2/", "localhost:5000"),
    ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("quay.io/some/repo", "quay.io"),
])
def test_normalize_registry(key: str, expected: str) -> None:
    assert normalize_registry(key) == expected


# --- Credential --------------------------------------------------------------------------------


def test_credential_repr_redacts_every_secret() -> None:
    cred = Credential(username="bob", password=SECRET, identity_token=SECRET + "i",
                      registry_token=SECRET + "r")
    for text in (repr(cred), str(cred), f"{cred}", repr([cred]), repr({"k": cred})):
        assert SECRET not in text
        assert "bob" in text
    assert repr(cred) == ("Credential(username='bob', password=<redacted>, "
                          "identity_token=<redacted>, registry_token=<redacted>)")
    assert repr(Credential(username="bob", password=SECRET)) == \
        "Credential(username='bob', password=<redacted>)"


def test_credential_anonymous() -> None:
    assert Credential().anonymous
    assert repr(Credential()) == "Credential()"
    assert not Credential(username="u").anonymous
    assert not Credential(registry_token="t").anonymous
    assert not Credential(identity_token="t").anonymous


# --- inline auths ------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "expected"), [
    ({"auth": b64(f"bob:{SECRET}")}, Credential(username="bob", password=SECRET)),
    ({"auth": b64("bob:pa:ss")}, Credential(username="bob", password="pa:ss")),
    ({"auth": b64("bob:p").rstrip("=")}, Credential(username="bob", password="p")),
    ({"username": "bob", "password": SECRET}, Credential(username="bob", password=SECRET)),
    ({"auth": b64("bob:from-auth"), "username": "x", "password": "y"},
     Credential(username="bob", password="from-auth")),
    ({"identitytoken": SECRET}, Credential(identity_token=SECRET)),
    ({"auth": b64("bob:"), "identitytoken": SECRET},
     Credential(username="bob", identity_token=SECRET)),
    ({"registrytoken": SECRET}, Credential(registry_token=SECRET)),
    ({"email": "bob@example.com"}, None),
])
def test_auths_entry_variants(entry: dict[str, str], expected: Credential | None) -> None:
    store = DockerConfigCredentials({"auths": {"registry.example": entry}})
    assert store.get("registry.example") == expected


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io",
                                 "registry-1.docker.io"])
def test_docker_hub_key_forms(key: str) -> None:
    store = DockerConfigCredentials({"auths": {key: {"auth": b64("hub:pw")}}})
    expected = Credential(username="hub", password="pw")
    assert store.get("docker.io") == expected
    assert store.get("index.docker.io") == expected
    assert store.get("ghcr.io") is None


def test_keys_with_scheme_and_path_compare_by_host_and_port() -> None:
    store = DockerConfigCredentials({"auths": {
        "https://ghcr.io": {"auth": b64("gh:pw")},
        "http://localhost:5000/v2/": {"auth": b64("local:pw")},
    }})
    assert store.get("ghcr.io") == Credential(username="gh", password="pw")
    assert store.get("localhost:5000") == Credential(username="local", password="pw")
    assert store.get("localhost") is None
    assert store.get("localhost:5001") is None


def test_empty_placeholder_does_not_hide_real_entry() -> None:
    store = DockerConfigCredentials({"auths": {
        "docker.io": {},
        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
    }})
    assert store.get("docker.io") == Credential(username="hub", password="pw")


@pytest.mark.parametrize("auth", [SECRET + "!!", b64(SECRET)])  # not base64; no colon
def test_bad_auth_field_is_an_error_without_its_value(auth: str) -> None:
    store = DockerConfigCredentials({"auths": {"ghcr.io": {"auth": auth}}}, source="cfg.json")
    with pytest.raises(CredentialError) as info:
        store.get("ghcr.io")
    assert "ghcr.io" in str(info.value) and "cfg.json" in str(info.value)
    assert_no_secret(info.value)


@pytest.mark.parametrize("config", [
    {"auths": []},
    {"auths": {"ghcr.io": "nope"}},
    {"credHelpers": {"ghcr.io": 1}},
    {"credsStore": ["x"]},
])
def test_wrong_shapes_are_credential_errors(config: dict[str, Any]) -> None:
    with pytest.raises(CredentialError):
        DockerConfigCredentials(config)


def test_bad_entry_only_breaks_its_own_registry() -> None:
    store = DockerConfigCredentials({"auths": {"bad.example": {"auth": "%%%"},
                                               "ghcr.io": {"auth": b64("gh:pw")}}})
    assert store.get("ghcr.io") == Credential(username="gh", password="pw")
    with pytest.raises(CredentialError):
        store.get("bad.example")


# --- locating and loading config.json ----------------------------------------------------------


def write_config(directory: Path, user: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {"ghcr.io": {"auth": b64(f"{user}:pw")}}}))
    return path


def user_of(store: DockerConfigCredentials) -> str | None:
    cred = store.get("ghcr.io")
    return cred.username if cred else None


def test_load_location_precedence(tmp_path: Path) -> None:
    explicit = write_config(tmp_path / "explicit", "explicit")
    write_config(tmp_path / "dc", "docker-config")
    write_config(tmp_path / "home" / ".docker", "home")
    env = {"DOCKER_CONFIG": str(tmp_path / "dc"), "HOME": str(tmp_path / "home")}
    assert user_of(DockerConfigCredentials.load(explicit, env=env)) == "explicit"
    assert user_of(DockerConfigCredentials.load(tmp_path / "explicit", env=env)) == "explicit"
    assert user_of(DockerConfigCredentials.load(env=env)) == "docker-config"
    assert user_of(DockerConfigCredentials.load(env={"HOME": env["HOME"]})) == "home"
    assert user_of(DockerConfigCredentials.load(env={}, home=env["HOME"])) == "home"


def test_load_without_any_location_or_file_is_empty(tmp_path: Path) -> None:
    assert DockerConfigCredentials.load(env={}).get("ghcr.io") is None
    assert DockerConfigCredentials.load(env={"HOME": str(tmp_path)}).get("ghcr.io") is None
    assert DockerConfigCredentials.load(tmp_path / "nope.json", env={}).get("ghcr.io") is None


def test_load_malformed_json_names_file_not_contents(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"ghcr.io": {"auth": "' + SECRET + '"}}')  # missing brace
    with pytest.raises(CredentialError) as info:
        DockerConfigCredentials.load(path, env={})
    assert str(path) in str(info.value)
    assert_no_secret(info.value)


def test_load_non_object_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps([SECRET]))
    with pytest.raises(CredentialError) as info:
        DockerConfigCredentials.load(path, env={})
    assert_no_secret(info.value)


# --- credential helpers ------------------------------------------------------------------------


def test_cred_helper_answers_for_its_host(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"Username": "gh", "Secret": SECRET}})
    store = helper.store_for({"credHelpers": {"ghcr.io": "fake"}}, tmp_path)
    assert store.get("ghcr.io") == Credential(username="gh", password=SECRET)
    assert helper.calls() == [{"url": "ghcr.io", "mark": "from-test-env"}]
    assert store.get("quay.io") is None  # no helper, no credsStore, no auths
    assert len(helper.calls()) == 1


def test_helper_results_are_cached_per_host(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"Username": "gh", "Secret": SECRET}})
    store = helper.store_for({"credsStore": "fake"}, tmp_path)
    for _ in range(3):
        assert store.get("ghcr.io") == Credential(username="gh", password=SECRET)
        assert store.get("quay.io") is None
    assert [c["url"] for c in helper.calls()] == ["ghcr.io", "quay.io"]


def test_docker_hub_is_asked_by_its_login_url(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"https://index.docker.io/v1/": {"Username": "hub", "Secret": SECRET}})
    store = helper.store_for({"credHelpers": {"docker.io": "fake"}}, tmp_path)
    assert store.get("index.docker.io") == Credential(username="hub", password=SECRET)
    assert [c["url"] for c in helper.calls()] == ["https://index.docker.io/v1/"]


def test_helper_is_also_asked_by_the_configs_own_key(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"https://ghcr.io": {"Username": "gh", "Secret": SECRET}})
    store = helper.store_for({"credsStore": "fake", "auths": {"https://ghcr.io": {}}}, tmp_path)
    assert store.get("ghcr.io") == Credential(username="gh", password=SECRET)
    assert [c["url"] for c in helper.calls()] == ["ghcr.io", "https://ghcr.io"]


def test_token_username_means_identity_token(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"Username": "<token>", "Secret": SECRET}})
    store = helper.store_for({"credsStore": "fake"}, tmp_path)
    assert store.get("ghcr.io") == Credential(identity_token=SECRET)


def test_cred_helper_wins_over_creds_store(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"Username": "gh", "Secret": "pw"}})
    config = {"credsStore": "missing-store", "credHelpers": {"ghcr.io": "fake"}}
    store = helper.store_for(config, tmp_path)
    assert store.get("ghcr.io") == Credential(username="gh", password="pw")
    with pytest.raises(CredentialError, match="docker-credential-missing-store"):
        store.get("quay.io")


def test_not_found_falls_back_to_inline_auths(helper: FakeHelper, tmp_path: Path) -> None:
    config = {"credsStore": "fake", "auths": {"ghcr.io": {"auth": b64("inline:pw")}}}
    store = helper.store_for(config, tmp_path)
    assert store.get("ghcr.io") == Credential(username="inline", password="pw")
    assert store.get("quay.io") is None
    assert [c["url"] for c in helper.calls()] == ["ghcr.io", "quay.io"]


def test_failing_helper_is_an_error_without_secret(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"fail": True, "Secret": SECRET}})
    config = {"credsStore": "fake", "auths": {"ghcr.io": {"auth": b64("inline:pw")}}}
    store = helper.store_for(config, tmp_path)
    with pytest.raises(CredentialError) as info:
        store.get("ghcr.io")
    assert "docker-credential-fake" in str(info.value)
    assert "ghcr.io" in str(info.value)
    assert "exit status 3" in str(info.value)
    assert_no_secret(info.value)


def test_garbage_output_is_an_error_without_it(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"garbage": True, "Secret": SECRET}})
    store = helper.store_for({"credsStore": "fake"}, tmp_path)
    with pytest.raises(CredentialError) as info:
        store.get("ghcr.io")
    assert "docker-credential-fake" in str(info.value) and "ghcr.io" in str(info.value)
    assert_no_secret(info.value)


def test_missing_helper_names_helper_and_host(helper: FakeHelper, tmp_path: Path) -> None:
    store = helper.store_for({"credHelpers": {"ghcr.io": "absent"}}, tmp_path)
    with pytest.raises(CredentialError) as info:
        store.get("ghcr.io")
    assert "docker-credential-absent" in str(info.value) and "ghcr.io" in str(info.value)


def test_errors_are_not_cached(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"fail": True, "Secret": SECRET}})
    store = helper.store_for({"credsStore": "fake"}, tmp_path)
    with pytest.raises(CredentialError):
        store.get("ghcr.io")
    helper.set_store({"ghcr.io": {"Username": "gh", "Secret": "pw"}})
    assert store.get("ghcr.io") == Credential(username="gh", password="pw")


def test_helper_name_cannot_escape_the_prefix(helper: FakeHelper) -> None:
    runner = SubprocessHelperRunner(helper.env)
    with pytest.raises(CredentialError, match="invalid credential helper name"):
        runner("../fake", "ghcr.io")


def test_slow_helper_times_out_and_is_killed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-slow"
    # The sleep is a child of sh and holds the output pipe: killing only sh would leave us waiting.
    script.write_text("#!/bin/sh\n/bin/sleep 30\n")
    script.chmod(0o755)
    runner = SubprocessHelperRunner({"PATH": str(bin_dir)}, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(CredentialError, match="timed out") as info:
        runner("slow", "ghcr.io")
    assert time.monotonic() - started < 10
    assert "docker-credential-slow" in str(info.value) and "ghcr.io" in str(info.value)


def test_injected_helper_runner() -> None:
    calls: list[tuple[str, str]] = []

    def runner(name: str, server_url: str) -> str | None:
        calls.append((name, server_url))
        return json.dumps({"ServerURL": server_url, "Username": "u", "Secret": "p"})

    store = DockerConfigCredentials({"credHelpers": {"https://ghcr.io": "gcr"}},
                                    helper_runner=runner)
    assert store.get("ghcr.io") == Credential(username="u", password="p")
    assert calls == [("gcr", "ghcr.io")]


# --- overrides and chains ----------------------------------------------------------------------


def test_static_credentials_normalise_keys() -> None:
    cred = Credential(username="o", password=SECRET)
    store = StaticCredentials({"https://index.docker.io/v1/": cred})
    assert store.get("docker.io") is cred
    assert store.get("ghcr.io") is None
    assert SECRET not in repr(store)


def test_chain_first_answer_wins_even_anonymous() -> None:
    a = StaticCredentials({"ghcr.io": Credential()})
    b = StaticCredentials({"ghcr.io": Credential(username="b"),
                           "quay.io": Credential(username="q")})
    chain = ChainCredentials(a, b)
    assert chain.get("ghcr.io") == Credential()
    assert chain.get("quay.io") == Credential(username="q")
    assert chain.get("docker.io") is None
    assert ChainCredentials().get("docker.io") is None


def test_default_store_overrides_win_over_docker_config(tmp_path: Path) -> None:
    write_config(tmp_path / "dc", "from-config")
    env = {"DOCKER_CONFIG": str(tmp_path / "dc")}
    assert default_store(env).get("ghcr.io") == Credential(username="from-config", password="pw")
    override = Credential(username="from-flag", password="x")
    store = default_store(env, {"ghcr.io": override})
    assert store.get("ghcr.io") == override
    assert store.get("quay.io") is None


def test_default_store_uses_env_for_helpers(helper: FakeHelper, tmp_path: Path) -> None:
    helper.set_store({"ghcr.io": {"Username": "gh", "Secret": "pw"}})
    write_config(tmp_path / "home" / ".docker", "unused")
    (tmp_path / "home" / ".docker" / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    env = {**helper.env, "HOME": str(tmp_path / "home")}
    assert default_store(env).get("ghcr.io") == Credential(username="gh", password="pw")
    assert helper.calls() == [{"url": "ghcr.io", "mark": "from-test-env"}]
