"""OCI image layouts and archives as places an image can be, like a registry.

An open :class:`Layout` is served in-process as a registry host of its own (``layout-<n>.
oci.invalid``) by an ``httpx`` transport, so the copy engine reads and writes it unchanged::

    async with open_layout("app.tar", archive=True, write=True) as layout:
        async with Registries(credentials, local={layout.host: layout.transport}) as pool:
            await Copier(pool).copy_image(source, layout.reference().repository, ["1.4"])

Modules: ``layout`` (open, commit, discard),
``state`` (entries, manifests, referrers, what index.json lists), ``transport`` (the protocol),
``store`` (blobs, hashed in and checked out), ``tarindex`` (an archive read in place), ``pack``
(deterministic archives), ``index`` (index.json and the two naming modes). The references
themselves (``oci:``/``oci-archive:``) are parsed in :mod:`registry.layout_ref`, outside the
package, so that telling a registry reference from a layout loads none of this.
"""

from ..errors import BlobNotInLayout, CorruptBlob, NotALayout
from ..layout_ref import LayoutRef, parse_place
from .index import REF_NAME, LayoutEntry, Naming
from .layout import HOST_SUFFIX, Layout, is_layout_host, open_layout

__all__ = [
    "HOST_SUFFIX",
    "REF_NAME",
    "BlobNotInLayout",
    "CorruptBlob",
    "Layout",
    "LayoutEntry",
    "LayoutRef",
    "Naming",
    "NotALayout",
    "is_layout_host",
    "open_layout",
    "parse_place",
]
