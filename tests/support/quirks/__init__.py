"""A quirk proxy: a real anonymous ``docker-registry`` behind, a hosted registry's ways in front.

- ``proxy``: :class:`QuirkProxy`, the threaded reverse proxy; ``exchange``: what the hooks of a
  :class:`Behaviour` see; ``wire``: HTTP/1.1 pieces.
- ``auth``: Basic, and Bearer with the proxy's own token endpoint.
- ``uploads``, ``manifests``, ``referrers``: the behaviours, each citing where it comes from.
- ``harness``: what the end-to-end profile tests share.
- ``profiles``: ECR, GHCR, Artifact Registry, Docker Hub, Quay, Harbor, ACR, GitLab,
  Artifactory, distribution 3, chunk-only: lists of behaviours, composable.
"""

from .auth import BasicAuth, BearerAuth
from .exchange import Behaviour, Exchange, Seen, Upstream
from .profiles import PROFILES, Profile
from .proxy import QuirkProxy
from .referrers import ReferrersAPI
from .wire import Reply, error_reply

__all__ = ["PROFILES", "BasicAuth", "BearerAuth", "Behaviour", "Exchange", "Profile",
           "QuirkProxy", "ReferrersAPI", "Reply", "Seen", "Upstream", "error_reply"]
