"""OHIF v3, the prebuilt viewer of npm ``@ohif/app`` (its ``dist/``, fetched, pinned and
integrity-checked by ``make ohif``), served at ``/viewer/`` with our ``app-config.js``.

Two ways: on radnode's own origin (:mod:`viewer_plugin.ohif.mount`, what ``make run``
does), or on an origin of its own with a proxy to radnode (:mod:`viewer_plugin.ohif.server`,
``radnode viewer``, the compose and Kubernetes ``ohif`` service). Either way OHIF reads
``/viewer/dicom-web/`` with the user's token from the viewer session
(:mod:`viewer_plugin.ohif.session`). docs/viewer.md.
"""
