"""The ``app-config.js`` OHIF reads: one DICOMweb data source, radnode's ``/dicom-web/``.

OHIF v3 app-config (``window.config``): the router below the viewer's path prefix, and the
``@ohif/extension-default`` DICOMweb data source with ``qidoRoot`` / ``wadoRoot`` at
``<prefix>/dicom-web`` on the viewer's own origin, where the viewer's session cookie is
turned into the user's bearer token (:mod:`viewer_plugin.ohif.session`); WADO-RS for
images and thumbnails, the investigational-use dialog off.
"""

from __future__ import annotations

import json

DICOMWEB_PATH = "/dicom-web"


def app_config_js(prefix: str = "", name: str = "radnode") -> str:
    """The JavaScript of ``app-config.js`` for OHIF served at ``prefix`` ("" is the root);
    the DICOMweb root is ``<prefix>/dicom-web``, made absolute in the browser."""
    prefix = prefix.rstrip("/")
    path = json.dumps(prefix + DICOMWEB_PATH)
    basename = json.dumps(prefix or "/")
    label = json.dumps(name)
    return f"""/* radnode: OHIF configuration (viewer_plugin/ohif/config.py) */
(function () {{
  var root = window.location.origin + {path};
  window.config = {{
    routerBasename: {basename},
    extensions: [],
    modes: [],
    customizationService: {{}},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: false,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    investigationalUseDialog: {{ option: 'never' }},
    maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 25 }},
    defaultDataSourceName: 'radnode',
    dataSources: [
      {{
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'radnode',
        configuration: {{
          friendlyName: {label},
          name: 'radnode',
          wadoUriRoot: root,
          qidoRoot: root,
          wadoRoot: root,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: false,
          singlepart: 'bulkdata,video',
          bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
          omitQuotationForMultipartRequest: true,
        }},
      }},
    ],
  }};
}})();
"""
