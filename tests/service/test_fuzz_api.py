"""Schemathesis against the service's own OpenAPI document: whatever a client sends that the
document allows, or nearly allows, the answer is never a server error.

The token is valid (so requests get past authentication to the models and handlers), but it
may copy only from ``127.0.0.1:1/…``: a generated source that matched would be refused by the
closed port at once, so the fuzz never reaches out to a registry or a broker.
"""

from __future__ import annotations

import fakeredis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.config import parse_serve_config
from tests.support.serve import sha256_hex
from workers.ledger import Ledger

TOKEN = "fuzz-token-3c9e"
_LEDGER = Ledger(fakeredis.FakeRedis())
_RELEASE = _LEDGER.create_release("127.0.0.1:1/acme/app@sha256:" + "b" * 64,
                                  [("127.0.0.1:2/acme/app", ("v1",))])
_APP = create_app(parse_serve_config({
    "default": "release",
    "destinations": {"release": ["127.0.0.1:2/acme/app"]},
    "tokens": [{"name": "fuzz", "sha256": sha256_hex(TOKEN), "sets": ["*"],
                "sources": ["127.0.0.1:1/*"]}],
}), {"FANOUT_BROKER_URL": "redis://127.0.0.1:1/0"}, ledger=_LEDGER)

schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_the_document_allows_is_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error])
