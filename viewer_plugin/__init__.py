"""Viewer integration: the Orthanc Python plugin, the OHIF configuration and the review UI.

Filled by the viewer issue; the package exists so the layout shows the architecture.
"""
