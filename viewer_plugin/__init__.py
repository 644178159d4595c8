"""Viewer integration: the Orthanc Python plugins, OHIF served beside radnode, the review
UI and the radiologists' feedback (confirm or relabel an AI result, as a DICOM SR)."""
