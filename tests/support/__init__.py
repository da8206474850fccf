"""Real-parts test infrastructure: registries, a token server, image builders, skopeo checks.

Independent of fanout's own code on purpose: a test that pushed or verified with `registry/` would
only prove the code agrees with itself. `registry_client` is the tests' one client for a real
registry; `images`, `layers` and `signing` build what tests push with it; `checks` is the one
check that a copy is complete and byte-identical to its source.
"""
