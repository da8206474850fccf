"""Credentials for registries: explicit overrides, Docker's ``config.json`` and credential helpers.

::

    CredentialStore (protocol)        get(registry) -> Credential | None
    ├── StaticCredentials             explicit per-registry overrides (CLI flags, settings)
    ├── DockerConfigCredentials       config.json: credHelpers / credsStore, then inline auths
    └── ChainCredentials              first store with an answer wins

``None`` means "this store knows nothing about that registry"; ``Credential()`` (anonymous) is an
answer, so an explicit anonymous override stops the chain. Registries are named by normalised
``host[:port]``; every Docker Hub alias is ``docker.io``.

The core never reads the process environment: callers at the edge pass ``os.environ`` (or a test's
mapping) to :func:`default_store` / :meth:`DockerConfigCredentials.load`. No secret may reach a
repr, a log line or an error message; errors name the file, helper and host, never contents or
output.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from registry.errors import CredentialError
from registry.hosts import DOCKER_HUB, DOCKER_HUB_SERVER_URL, canonical_host

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Helper names become part of an executable name: no path separators, nothing a shell would mind.
_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# docker-credential-helpers' errCredentialsNotFoundMessage, printed (to stdout) with exit status 1.
_NOT_FOUND = "credentials not found in native keychain"
DEFAULT_HELPER_TIMEOUT = 30.0

HelperRunner = Callable[[str, str], str | None]


def normalize_registry(server: str) -> str:
    """``host[:port]`` for a config key or registry name: scheme and path dropped, Hub aliased."""
    host = _SCHEME.sub("", server.strip()).split("/", 1)[0].lower()
    return canonical_host(host)


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """What to authenticate with; all fields empty means anonymous."""

    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth2 refresh token for the token endpoint
    registry_token: str = ""  # bearer token sent to the registry as is

    @property
    def anonymous(self) -> bool:
        """True when there is nothing to authenticate with."""
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"] if self.username else []
        parts += [f"{name}=<redacted>"
                  for name in ("password", "identity_token", "registry_token")
                  if getattr(self, name)]
        return f"Credential({', '.join(parts)})"

    __str__ = __repr__


class CredentialStore(Protocol):
    def get(self, registry: str) -> Credential | None:
        """The credential for ``registry`` (normalised ``host[:port]``), or None if unknown."""
        ...


class StaticCredentials:
    """Explicit overrides, keyed by registry in any form :func:`normalize_registry` accepts."""

    def __init__(self, entries: Mapping[str, Credential]) -> None:
        self._entries = {normalize_registry(k): v for k, v in entries.items()}

    def get(self, registry: str) -> Credential | None:
        """The override for ``registry``, if one was given."""
        return self._entries.get(normalize_registry(registry))

    def __repr__(self) -> str:
        return f"StaticCredentials({sorted(self._entries)!r})"


class ChainCredentials:
    """Asks each store in turn; the first answer (even anonymous) wins."""

    def __init__(self, *stores: CredentialStore) -> None:
        self._stores = stores

    def get(self, registry: str) -> Credential | None:
        """The first non-None answer among the stores."""
        for store in self._stores:
            found = store.get(registry)
            if found is not None:
                return found
        return None


class SubprocessHelperRunner:
    """Runs ``docker-credential-NAME get``: the default ``helper_runner``.

    ``env`` is the helper's whole environment and its ``PATH`` is where the helper is looked up;
    None inherits this process's environment. A helper that outlives ``timeout`` is killed together
    with its children (which could otherwise hold the output pipe open and hang us).
    """

    def __init__(self, env: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_HELPER_TIMEOUT) -> None:
        self._env = dict(env) if env is not None else None
        self._timeout = timeout

    def __call__(self, helper: str, server_url: str) -> str | None:
        """The helper's stdout, or None when it has no credentials for ``server_url``."""
        if not _HELPER_NAME.match(helper):
            raise CredentialError(f"invalid credential helper name {helper!r}")
        program = f"docker-credential-{helper}"
        search_path = self._env.get("PATH", os.defpath) if self._env is not None else None
        executable = shutil.which(program, path=search_path)
        if executable is None:
            raise CredentialError(f"credential helper {program} not found on PATH "
                                  f"(needed for {server_url})")
        try:
            proc = subprocess.Popen(
                [executable, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self._env, text=True, start_new_session=True)
        except OSError as exc:
            raise CredentialError(f"credential helper {program} could not be started for "
                                  f"{server_url}: {exc.strerror}") from None
        try:
            stdout, stderr = proc.communicate(server_url, timeout=self._timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            stdout, stderr = proc.communicate()
        else:
            timed_out = False
        if timed_out:
            raise CredentialError(f"credential helper {program} timed out after "
                                  f"{self._timeout:g}s for {server_url}")
        if proc.returncode != 0:
            if _NOT_FOUND in stdout or _NOT_FOUND in stderr:
                return None
            # Deliberately nothing from stdout or stderr: helpers print secrets and echo input.
            raise CredentialError(f"credential helper {program} failed for {server_url} "
                                  f"(exit status {proc.returncode})")
        return stdout


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # no killpg (Windows) or gone
        proc.kill()


class DockerConfigCredentials:
    """Credentials from a parsed Docker ``config.json``.

    For a registry: its ``credHelpers`` helper, else ``credsStore``; if the helper has nothing,
    the inline ``auths`` entry. A helper that fails raises rather than falling back, so a broken
    keychain is reported instead of silently pushing anonymously. Answers are cached per registry.
    """

    def __init__(self, config: Mapping[str, Any] | None, *,
                 helper_runner: HelperRunner | None = None, source: str = "") -> None:
        self._source = source or "Docker config"
        self._runner: HelperRunner = helper_runner or SubprocessHelperRunner()
        config = config or {}
        if not isinstance(config, Mapping):
            raise CredentialError(f"{self._source}: top level is not a JSON object")
        self._auths: dict[str, Mapping[str, Any]] = {}
        self._keys: dict[str, list[str]] = {}  # host -> original keys, for helper lookups
        for key, entry in self._section(config, "auths").items():
            if not isinstance(entry, Mapping):
                raise CredentialError(f"{self._source}: auths entry {key!r} is not an object")
            host = normalize_registry(key)
            self._keys.setdefault(host, []).append(key)
            # Empty entries are placeholders `docker login` writes when a helper holds the secret;
            # among real duplicates (e.g. two Hub spellings) the first in the file wins.
            if entry and host not in self._auths:
                self._auths[host] = entry
        self._helpers: dict[str, str] = {}
        for key, helper in self._section(config, "credHelpers").items():
            if not isinstance(helper, str):
                raise CredentialError(f"{self._source}: credHelpers entry {key!r} is not a string")
            host = normalize_registry(key)
            self._keys.setdefault(host, []).append(key)
            if helper:
                self._helpers.setdefault(host, helper)
        store = config.get("credsStore", "")
        if not isinstance(store, str):
            raise CredentialError(f"{self._source}: credsStore is not a string")
        self._store = store
        self._cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *,
             env: Mapping[str, str] | None = None,
             home: str | None = None) -> DockerConfigCredentials:
        """Read ``path``, else ``$DOCKER_CONFIG/config.json``, else ``HOME/.docker/config.json``.

        ``env`` supplies DOCKER_CONFIG and HOME and is the helpers' environment (None: helpers
        inherit this process's). A missing file is an empty store; a malformed one is an error.
        """
        file = _locate_config(path, env or {}, home)
        runner = SubprocessHelperRunner(env)
        if file is None:
            return cls(None, helper_runner=runner)
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(None, helper_runner=runner, source=source)
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"cannot read Docker config {source}: "
                                  f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
                                  ) from None
        config, problem = _parse_json(text)
        if problem:
            raise CredentialError(f"malformed Docker config {source}: {problem}")
        if not isinstance(config, Mapping):
            raise CredentialError(f"malformed Docker config {source}: not a JSON object")
        return cls(config, helper_runner=runner, source=source)

    def get(self, registry: str) -> Credential | None:
        """The credential for ``registry``; None if neither a helper nor ``auths`` has one."""
        host = normalize_registry(registry)
        if not host:
            return None
        with self._lock:
            if host in self._cache:
                return self._cache[host]
            host_lock = self._host_locks.setdefault(host, threading.Lock())
        # One helper run per host even when many copies ask at once; other hosts don't wait.
        with host_lock:
            with self._lock:
                if host in self._cache:
                    return self._cache[host]
            found = self._resolve(host)
            with self._lock:
                self._cache[host] = found
        return found

    def __repr__(self) -> str:
        return f"DockerConfigCredentials(source={self._source!r})"

    def _section(self, config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        section = config.get(name)
        if section is None:
            return {}
        if not isinstance(section, Mapping):
            raise CredentialError(f"{self._source}: {name} is not a JSON object")
        return section

    def _resolve(self, host: str) -> Credential | None:
        helper = self._helpers.get(host) or self._store
        if helper:
            found = self._from_helper(helper, host)
            if found is not None:
                return found
        entry = self._auths.get(host)
        return self._from_entry(host, entry) if entry is not None else None

    def _from_helper(self, helper: str, host: str) -> Credential | None:
        # The form `docker login` stores first, then the config's own spellings of this host.
        first = DOCKER_HUB_SERVER_URL if host == DOCKER_HUB else host
        for server_url in dict.fromkeys([first, *self._keys.get(host, [])]):
            out = self._runner(helper, server_url)
            if out is None or not out.strip():
                continue
            doc, problem = _parse_json(out)
            if problem or not isinstance(doc, Mapping):
                raise CredentialError(f"credential helper docker-credential-{helper} returned "
                                      f"malformed output for {host}")
            username, secret = doc.get("Username", ""), doc.get("Secret", "")
            if not isinstance(username, str) or not isinstance(secret, str):
                raise CredentialError(f"credential helper docker-credential-{helper} returned "
                                      f"malformed output for {host}")
            if username == "<token>":  # Docker's convention for an identity (refresh) token
                return Credential(identity_token=secret)
            found = Credential(username=username, password=secret)
            if not found.anonymous:
                return found
        return None

    def _from_entry(self, host: str, entry: Mapping[str, Any]) -> Credential | None:
        fields: dict[str, str] = {}
        for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
            value = entry.get(name, "")
            if not isinstance(value, str):
                raise CredentialError(f"{self._source}: auths entry for {host}: "
                                      f"{name} is not a string")
            fields[name] = value
        username, password = fields["username"], fields["password"]
        if fields["auth"]:
            username, password = _decode_auth(fields["auth"], f"{self._source}: auths entry "
                                                              f"for {host}")
        found = Credential(username=username, password=password,
                           identity_token=fields["identitytoken"],
                           registry_token=fields["registrytoken"])
        return None if found.anonymous else found


def _decode_auth(auth: str, where: str) -> tuple[str, str]:
    # Errors are raised outside the except blocks so no exception holding the value is chained.
    decoded: str | None
    try:
        padded = auth.strip() + "=" * (-len(auth.strip()) % 4)  # some tools drop the padding
        decoded = base64.b64decode(padded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        decoded = None
    if decoded is None:
        raise CredentialError(f"{where}: auth is not valid base64")
    username, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialError(f"{where}: auth does not decode to user:password")
    return username, password


def _parse_json(text: str) -> tuple[Any, str]:
    """The parsed document and "", or None and a description that quotes none of ``text``."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at line {exc.lineno} column {exc.colno}"


def _locate_config(path: str | os.PathLike[str] | None, env: Mapping[str, str],
                   home: str | None) -> Path | None:
    if path is not None:
        file = Path(path)
        # Accept a directory too, as `docker --config DIR` and DOCKER_CONFIG do.
        return file / "config.json" if file.is_dir() else file
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = home or env.get("HOME")
    return Path(home) / ".docker" / "config.json" if home else None


def default_store(env: Mapping[str, str], overrides: Mapping[str, Credential] | None = None,
                  *, config_path: str | os.PathLike[str] | None = None) -> CredentialStore:
    """Overrides first, then the Docker config found via ``config_path`` or ``env``."""
    return ChainCredentials(StaticCredentials(overrides or {}),
                            DockerConfigCredentials.load(config_path, env=env))
