"""The stable patient-level split into train / validation / test.

A patient's split is a pure function of the de-identification salt and the patient key
(itself a salted hash of the Patient ID, :func:`ai_node.retrain.deid.patient_key`), so a
patient keeps its split across retrains as long as the node's salt stays the same, and
every study of a patient lands in the same split (no patient leaks from train into test).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def split_of(salt: str, patient_key: str, val_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for this patient (uniform hash in [0, 1))."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0):
        raise ValueError("val_fraction must be in [0, 1) and test_fraction in (0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must leave studies for training")
    digest = hashlib.sha256(f"split\0{salt}\0{patient_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
