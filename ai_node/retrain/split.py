"""The patient-level split into train / validation / test, stratified by label.

Patients, not studies, are split: every study of a patient lands in the same split, so no
patient leaks from train into test. A patient's class is positive when any of its studies
is labelled positive. Within each class the patients are ordered by a salted hash of
their key (:func:`patient_order`); the first ``round(test_fraction * n)`` go to test, up to
``round((test_fraction + val_fraction) * n)`` to validation and the rest to train. Each
split thus holds the class mix of the whole set, and the split is a pure function of the
salt and the labelled patients: the same labels give the same split. As labels accumulate
the boundaries move with the class counts, so a patient near a boundary can change split
from one run to the next.

The evaluation needs both classes in the test split, in numbers that make its intervals
useful: :func:`check_test_split` stops a run before training when the test split holds
fewer than the configured minimum of either class, and says how many more labels of that
class would be needed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The labelled studies cannot give a test split the evaluation can rely on."""


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0):
        raise ValueError("val_fraction must be in [0, 1) and test_fraction in (0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must leave studies for training")


def patient_order(salt: str, patient_key: str) -> float:
    """The patient's place within its class: a uniform hash in [0, 1)."""
    digest = hashlib.sha256(f"split\0{salt}\0{patient_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _round(x: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(x + 0.5)


def patients_in_test(patients: int, test_fraction: float) -> int:
    """Patients of one class that go to the test split."""
    return _round(test_fraction * patients)


def split_sizes(patients: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many patients of one class go to each split (cumulative rounding, so the three
    add up to ``patients``)."""
    test = patients_in_test(patients, test_fraction)
    val = _round((test_fraction + val_fraction) * patients) - test
    return {"test": test, "val": val, "train": patients - test - val}


def assign_splits(
    salt: str, patient_labels: Mapping[str, int], val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """The split of each patient (key -> ``"train"``, ``"val"`` or ``"test"``);
    ``patient_labels``: each patient's class (1 when any of its studies is positive)."""
    check_fractions(val_fraction, test_fraction)
    out: dict[str, str] = {}
    for label in sorted(set(patient_labels.values())):
        members = sorted(
            (k for k, v in patient_labels.items() if v == label),
            key=lambda k: (patient_order(salt, k), k),
        )
        sizes = split_sizes(len(members), val_fraction, test_fraction)
        bounds = (("test", sizes["test"]), ("val", sizes["test"] + sizes["val"]))
        for i, key in enumerate(members):
            out[key] = next((name for name, end in bounds if i < end), "train")
    return out


def patient_classes(studies: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Each patient's class from its studies' (patient key, label) pairs."""
    classes: dict[str, int] = {}
    for key, label in studies:
        classes[key] = max(classes.get(key, 0), int(label))
    return classes


def more_needed(patients: int, in_test: int, minimum: int, test_fraction: float) -> int:
    """Labels of one class (each of a new patient) that would bring the test split from
    ``in_test`` to ``minimum`` studies of that class, given ``patients`` of it now."""
    if in_test >= minimum:
        return 0
    base = patients_in_test(patients, test_fraction)
    extra = 1
    while in_test + patients_in_test(patients + extra, test_fraction) - base < minimum:
        extra += 1
    return extra


@dataclass(frozen=True)
class SplitMinimum:
    """The fewest studies of each class the test split must hold (settings
    ``retraining_min_test_negatives`` and ``retraining_min_test_positives``)."""

    negatives: int
    positives: int
    class_names: Sequence[str] = ("negative", "positive")

    def as_dict(self) -> dict[str, Any]:
        return {
            "negatives": self.negatives,
            "positives": self.positives,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> SplitMinimum:
        return cls(int(value["negatives"]), int(value["positives"]), tuple(value["class_names"]))

    def shortfall(
        self, patients: Sequence[int], in_test: Sequence[int], test_fraction: float
    ) -> str | None:
        """None when the test split holds enough of both classes; else why not and how many
        more labels of which class it needs. ``patients`` and ``in_test``: per class
        (negative, positive), the patients in all and the studies in the test split."""
        minima = (self.negatives, self.positives)
        needs = [
            (more_needed(patients[c], in_test[c], minima[c], test_fraction), c) for c in (0, 1)
        ]
        if not any(n for n, _ in needs):
            return None
        names = self.class_names
        held = f"{in_test[1]} '{names[1]}' and {in_test[0]} '{names[0]}' studies"
        wanted = " and ".join(f"{n} more '{names[c]}'" for n, c in reversed(needs) if n)
        return (
            f"the test split would hold {held}; the evaluation needs at least "
            f"{self.positives} '{names[1]}' and {self.negatives} '{names[0]}': label "
            f"{wanted} studies (of patients not yet labelled; a share of "
            f"{test_fraction:g} of each class goes to the test split) and run again"
        )


def check_test_split(
    studies: Sequence[Mapping[str, Any]], minimum: SplitMinimum, test_fraction: float
) -> None:
    """Raise :class:`SplitError` when the test split of ``studies`` (dicts with ``patient``,
    ``label``, ``split``) holds too few studies of either class."""
    classes = patient_classes((str(s["patient"]), int(s["label"])) for s in studies)
    patients = [sum(1 for c in classes.values() if c == k) for k in (0, 1)]
    in_test = [
        sum(1 for s in studies if s["split"] == "test" and int(s["label"]) == k) for k in (0, 1)
    ]
    message = minimum.shortfall(patients, in_test, test_fraction)
    if message is not None:
        raise SplitError(message)


def check_label_counts(labels: Sequence[int], minimum: SplitMinimum, test_fraction: float) -> None:
    """The check before anything is fetched: with one study per patient, could these labels
    give a test split with enough of both classes? Raises :class:`SplitError` if not."""
    counts = [sum(1 for x in labels if int(x) == k) for k in (0, 1)]
    in_test = [patients_in_test(n, test_fraction) for n in counts]
    message = minimum.shortfall(counts, in_test, test_fraction)
    if message is not None:
        raise SplitError(message)
