"""radnode, the application: the ``radnode`` command and the assembly of its processes.

The layers below it, from the bottom: ``radnode_core`` (settings, store, index, ingest,
job queue, audit, TLS), the features (``dimse_scp``, ``ai_node``, ``pacs_link``) and the
edges (``viewer_plugin``, ``dicomweb``). docs/architecture.md draws the map.
"""

from radnode_core import __version__

__all__ = ["__version__"]
