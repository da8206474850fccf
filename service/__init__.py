"""``fanout serve``: the front door over HTTP, for whoever must not reach the broker.

Hosted CI enqueues releases with a bearer token (:mod:`service.releases`), registries announce
pushes (:mod:`service.hooks`), operators read the release page (:mod:`service.page`). The
service is stateless: the ledger and the deduplication window live in Redis, so any number of
copies can run behind a load balancer. It sits above :mod:`producer` (whose enqueue it calls)
and below nothing: no other package imports it, but ``producer.serve_cmd`` when it starts it.
"""
