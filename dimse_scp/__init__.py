"""The DICOM network edge: a pynetdicom Storage SCP (PS3.4 Annex B) and Verification SCP.

``server`` builds and runs the Application Entity, ``access`` decides who may
associate, ``handlers`` turns each C-STORE into a durable, indexed instance and
a DIMSE status, ``completion`` decides when a study is complete and queues its
job, ``scu`` holds the small SCU helpers of the CLI.
"""
