"""OHIF v3 served beside radnode: the prebuilt viewer of npm ``@ohif/app`` (its ``dist/``,
fetched by ``make ohif``), our ``app-config.js``, and a same-origin proxy of ``/dicom-web/``.

OHIF loads ``/app-config.js`` and its bundles from the root of its origin, so it gets an
origin (port) of its own; proxying ``/dicom-web/`` to radnode's HTTP edge from that origin
means no CORS (docs/viewer.md). Run it with ``python -m viewer_plugin.ohif``.
"""
