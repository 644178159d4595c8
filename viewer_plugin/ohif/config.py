"""The ``app-config.js`` OHIF reads: one DICOMweb data source, radnode's ``/dicom-web/``.

OHIF v3 app-config (``window.config``): the ``@ohif/extension-default`` DICOMweb data source
with ``qidoRoot`` / ``wadoRoot`` on the viewer's own origin (the proxy forwards them to
radnode), WADO-RS for images and thumbnails, the investigational-use dialog off.
"""

from __future__ import annotations

import json

DICOMWEB_PATH = "/dicom-web"


def app_config_js(dicomweb_path: str = DICOMWEB_PATH, name: str = "radnode") -> str:
    """The JavaScript of ``app-config.js`` (roots are made absolute in the browser)."""
    path = json.dumps(dicomweb_path.rstrip("/"))
    label = json.dumps(name)
    return f"""/* radnode: OHIF configuration (viewer_plugin/ohif/config.py) */
(function () {{
  var root = window.location.origin + {path};
  window.config = {{
    routerBasename: '/',
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
