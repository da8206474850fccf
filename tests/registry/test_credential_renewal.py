"""A client that outlives one copy (a worker's, kept from task to task) keeps its tokens while
its credential is unchanged, and drops them the moment the credential changes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from registry import scopes
from registry.capabilities import Capabilities
from registry.client import RegistryClient
from registry.credentials import Credential
from registry.errors import Unauthorized
from registry.options import TransportOptions
from tests.registry.test_auth import PASSWORD, REGISTRY, USER, Fake, basic


class Store:
    """A credential store whose answer can change, counting lookups."""

    def __init__(self, credential: Credential) -> None:
        self.credential = credential
        self.lookups = 0

    def get(self, registry: str) -> Credential | None:
        self.lookups += 1
        return self.credential


def token_requests(fake: Fake) -> list[httpx.Request]:
    return [request for request in fake.log if request.url.host == "auth.test"]


async def get_manifest(client: RegistryClient) -> None:
    await client.request("GET", "/v2/team/app/manifests/v1", expected={200}, what="get",
                         scopes=scopes.pull("team/app"))


def test_tokens_survive_renewal_while_the_credential_is_unchanged() -> None:
    fake, store = Fake(), Store(USER)

    async def scenario() -> None:
        client = RegistryClient(REGISTRY, credentials=store, options=TransportOptions(),
                                capabilities=Capabilities(), transport=httpx.MockTransport(fake))
        await get_manifest(client)
        assert len(token_requests(fake)) == 1 and store.lookups == 1
        # The next task, well within the credential's age: not even a lookup.
        client.renew_credentials(store, older_than=60)
        await get_manifest(client)
        assert store.lookups == 1
        # Older than the limit: looked up again, found the same, the token kept.
        client.renew_credentials(store, older_than=0)
        await get_manifest(client)
        assert store.lookups == 2 and len(token_requests(fake)) == 1
        await client.aclose()

    asyncio.run(scenario())
    pings = [r for r in fake.log if r.url.path == "/v2/"]
    assert len(pings) == 1  # the probe is the process's, not the task's


def test_a_changed_credential_gets_new_tokens_and_is_used_at_once() -> None:
    fake = Fake()
    store = Store(USER)
    rotated = Credential(username="alice", password="rotated-" + PASSWORD)

    async def scenario() -> None:
        client = RegistryClient(REGISTRY, credentials=store, options=TransportOptions(),
                                capabilities=Capabilities(), transport=httpx.MockTransport(fake))
        await get_manifest(client)
        store.credential = rotated
        client.renew_credentials(store, older_than=0)
        await get_manifest(client)
        await client.aclose()

    asyncio.run(scenario())
    first, second = token_requests(fake)
    assert first.headers["authorization"] == basic("alice", PASSWORD)
    assert second.headers["authorization"] == basic("alice", "rotated-" + PASSWORD)


def test_a_refused_credential_is_looked_up_again_at_the_next_request() -> None:
    # A worker's client outlives the task that failed: once the password is fixed, the next
    # attempt must use it, not wait for the credential's age.
    fake = Fake(challenge='Basic realm="registry.test"')
    wrong = Credential(username="alice", password="wrong")
    store = Store(wrong)

    async def scenario() -> None:
        client = RegistryClient(REGISTRY, credentials=store, options=TransportOptions(),
                                capabilities=Capabilities(), transport=httpx.MockTransport(fake))
        with pytest.raises(Unauthorized):
            await get_manifest(client)
        store.credential = USER  # the operator fixes it
        client.renew_credentials(store, older_than=3600)  # the next task, well within the age
        await get_manifest(client)
        await client.aclose()

    asyncio.run(scenario())
    sent = [r.headers.get("authorization") for r in fake.log if r.url.path != "/v2/"]
    assert sent[-1] == basic("alice", PASSWORD)
