"""radnode: settings, instance store, index and job queue shared by every part of the node.

The network edges (``dimse_scp``, ``dicomweb``), the AI (``ai_node``) and the
viewer integration (``viewer_plugin``) all build on this package.
"""

__version__ = "0.1.0"

# PS3.7 D.3.3.2: identifies the software that wrote a file's meta information.
# 1.2.826.0.1.3680043.10.543 is the pydicom-registered root; radnode's branch ends .1.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.543.1.1"
IMPLEMENTATION_VERSION_NAME = f"RADNODE_{__version__.replace('.', '')}"
