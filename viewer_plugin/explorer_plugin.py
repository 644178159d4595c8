"""Orthanc's ``PythonScript`` for the Orthanc Explorer extension (AI result, Confirm / Relabel).

The work is in :mod:`viewer_plugin.explorer`; this script only makes the repository
importable to Orthanc's embedded interpreter and registers it. Orthanc runs one
``PythonScript``: to run this and the stable-study notifier (``orthanc_plugin.py``)
together, register both from one script.
"""

import sys
from pathlib import Path

import orthanc  # type: ignore[import-not-found]  # provided by the orthanc-python plugin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from viewer_plugin.explorer import register  # noqa: E402

register(orthanc)
