"""The DICOM network edge: a pynetdicom Storage SCP (PS3.4 Annex B), Query/Retrieve SCP
(PS3.4 Annex C) and Verification SCP.

``server`` builds and runs the Application Entity, ``tls`` its TLS port, ``access``
decides who may associate, ``handlers`` turns each C-STORE into a durable, indexed
instance and a DIMSE status, ``completion`` decides when a study is complete and queues
its job. ``query_retrieve`` answers C-FIND, C-MOVE and C-GET: ``identifier`` parses their
Identifiers into the shared query of :mod:`radnode_core.query`, ``retrieve`` decides what
each C-STORE sub-operation sends.
"""
