"""Orthanc's ``PythonScript``: posts STABLE_STUDY events to radnode.

The work is in :mod:`viewer_plugin.orthanc_notify`; this script only makes the
repository importable to Orthanc's embedded interpreter and registers it.
"""

import sys
from pathlib import Path

import orthanc  # type: ignore[import-not-found]  # provided by the orthanc-python plugin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from viewer_plugin.orthanc_notify import register  # noqa: E402

register(orthanc)
