"""Real-parts test infrastructure: registries, a token server, image builders, skopeo checks.

Independent of fanout's own code on purpose: a test that pushed or verified with `registry/` would
only prove the code agrees with itself.
"""
