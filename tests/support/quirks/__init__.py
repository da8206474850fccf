"""A quirk proxy: a real anonymous ``docker-registry`` behind, a hosted registry's ways in front.

- ``proxy``: :class:`QuirkProxy`, the threaded reverse proxy (a ``loopback_proxy.LoopbackProxy``
  speaking ``http_wire``); ``exchange``: what the hooks of a :class:`Behaviour` see;
  ``replies``: the answers the proxy gives itself.
- ``auth``: Basic, and Bearer with the proxy's own token endpoint.
- ``uploads``, ``manifests``, ``referrers``: the behaviours, each citing where it comes from;
  ``listing``: paged tag lists and DELETE by tag, for mirrors.
- ``harness``: what the end-to-end profile tests share (their fixtures are in
  ``tests/integration/conftest.py``).
- ``profiles``: ECR, GHCR, Artifact Registry, Docker Hub, Quay, Harbor, ACR, GitLab,
  Artifactory, distribution 3, chunk-only: lists of behaviours, composable.
"""

from .auth import BasicAuth, BearerAuth
from .exchange import Behaviour, Exchange, Seen, Upstream
from .profiles import PROFILES, Profile
from .proxy import QuirkProxy
from .referrers import ReferrersAPI
from .replies import Reply, error_reply

__all__ = ["PROFILES", "BasicAuth", "BearerAuth", "Behaviour", "Exchange", "Profile",
           "QuirkProxy", "ReferrersAPI", "Reply", "Seen", "Upstream", "error_reply"]
