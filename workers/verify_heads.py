"""The registry side of ``fanout verify``: where each tag points, whether each digest is there.

Every distinct (repository, tag) and (repository, digest) is asked once per run, however many
releases name it, through one pool (:class:`registry.session.Registries`) with a bounded number
of requests in flight. Tags are asked first: a tag found naming a digest proves that digest
present in its repository, so it needs no HEAD of its own. A host that refused a connection or
timed out (after the request tier's retries) is asked nothing more in that run: its other
checks are answered with the same error at once, so a registry that is down costs one check,
not hundreds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from registry.errors import ConnectionFailed, NotFound, RegistryError, Timeout
from registry.fetch import manifest_head
from registry.reference import Repository
from registry.retry import RetryPolicy, retry_async
from registry.session import Registries
from registry.tags import resolve_tag

# 16 requests in flight: hundreds of checks take seconds, and no registry sees a burst.
DEFAULT_CONCURRENCY = 16
# A verification is waited for by someone: a blip is retried, an outage is reported.
VERIFY_RETRY = RetryPolicy(attempts=3, initial=0.5, maximum=2.0, max_elapsed=10.0, max_hold=5.0)

# (repository as ``host/path``, tag or digest)
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a registry said about one reference."""

    digest: str | None  # the digest the reference names there; None: absent
    error: RegistryError | None = None  # set when the registry could not be asked


class Heads:
    """Asks registries where references point; :meth:`ask` fills :attr:`answers`."""

    def __init__(self, registries: Registries, *, concurrency: int = DEFAULT_CONCURRENCY,
                 retry: RetryPolicy = VERIFY_RETRY) -> None:
        self._registries = registries
        self._slots = asyncio.Semaphore(concurrency)
        self._retry = retry
        self._down: dict[str, RegistryError] = {}
        self.answers: dict[Key, Answer] = {}

    async def ask(self, tags: Iterable[tuple[Repository, str]],
                  contents: Iterable[tuple[Repository, str]]) -> dict[Key, Answer]:
        """Where each (repository, tag) points and whether each (repository, digest) is
        present; each asked once, whatever the repeats."""
        await self._each(tags, digest=False)
        for (repository, _), answer in list(self.answers.items()):
            if answer.digest is not None:
                self.answers.setdefault((repository, answer.digest), Answer(answer.digest))
        await self._each(contents, digest=True)
        return self.answers

    async def _each(self, references: Iterable[tuple[Repository, str]], *, digest: bool) -> None:
        wanted = {(str(repo), ref): repo for repo, ref in references}
        keys = [key for key in wanted if key not in self.answers]
        found = await asyncio.gather(*(self._head(wanted[key], key[1], digest=digest)
                                       for key in keys))
        self.answers.update(zip(keys, found, strict=True))

    async def _head(self, repository: Repository, reference: str, *, digest: bool) -> Answer:
        host = repository.registry
        async with self._slots:
            if host in self._down:
                return Answer(None, self._down[host])
            client = self._registries.client(host)
            try:
                if not digest:
                    return Answer(await resolve_tag(client, repository.path, reference,
                                                    retry=self._retry))
                info = await retry_async(
                    self._retry, lambda: manifest_head(client, repository.path, reference),
                    what=f"check {repository}@{reference}")
                return Answer(reference if info is not None else None)
            except NotFound:
                return Answer(None)  # deleted between the HEAD and the GET
            except (ConnectionFailed, Timeout) as exc:
                self._down.setdefault(host, exc)
                return Answer(None, exc)
            except RegistryError as exc:
                return Answer(None, exc)
