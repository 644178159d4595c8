"""From a stack of slices to a study-level answer: region, lesion score, driving slice.

The study score is a radiologist-readable aggregation: the maximum over slices of
the slice probabilities smoothed along z with a 3-slice moving average (a lesion
spans neighbouring slices; a single noisy slice does not), and the slice where that
maximum sits is reported as the one that drove the score. The region model runs on
an evenly spaced sample of slices (the anatomy changes slowly along z) and its
probabilities are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai_node.labels import REGION_LABELS
from ai_node.models import LoadedModel
from ai_node.preprocess import SliceStack, load_series, model_input

REGION_SAMPLE = 24
"""Slices the region model sees per study (evenly spaced)."""

SMOOTHING = 3
"""Slices in the moving average of the finding probabilities."""

MAX_EVIDENCE = 5
"""Most slices referenced as evidence of a finding."""


class Models(Protocol):
    def get(self, task: str) -> LoadedModel: ...


@dataclass
class StudyAnalysis:
    """Everything the SR and the results row report about one study."""

    region: str
    region_probabilities: dict[str, float]
    in_scope: bool
    score: float | None = None
    driving_slice: int | None = None
    slice_scores: list[float] = field(default_factory=list)
    evidence_slices: list[int] = field(default_factory=list)
    model_versions: dict[str, str] = field(default_factory=dict)


def sample_indices(n: int, k: int = REGION_SAMPLE) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def smooth(scores: np.ndarray, width: int = SMOOTHING) -> np.ndarray:
    """Moving average along z, edges padded with their own value."""
    if scores.size == 0 or width <= 1:
        return scores.astype(np.float64)
    pad = width // 2
    padded = np.pad(scores.astype(np.float64), pad, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def classify_region(
    stack: SliceStack, models: Models, batch_size: int = 64
) -> tuple[str, dict[str, float]]:
    model = models.get("region")
    idx = sample_indices(len(stack))
    probs = model.predict_batched(model_input(stack.hu[idx], model.window), batch_size).mean(axis=0)
    labels = tuple(model.card.get("labels", REGION_LABELS))
    region = str(labels[int(np.argmax(probs))])
    return region, {str(label): round(float(p), 4) for label, p in zip(labels, probs, strict=True)}


def finding_probabilities(hu: np.ndarray, models: Models, batch_size: int = 64) -> np.ndarray:
    """Per-slice lesion probabilities of (N, S, S) HU slices."""
    model = models.get("finding")
    return np.asarray(model.predict_batched(model_input(hu, model.window), batch_size)[:, 0])


def decode_and_score(
    paths: Sequence[Path], models: Models, batch_size: int = 64, compressed: bool = True
) -> tuple[SliceStack, np.ndarray]:
    """Decode a series and compute the finding model's slice probabilities, overlapped:
    each chunk of decoded slices is scored on another thread while the next files decode
    (TensorFlow and most of numpy run outside the GIL, decoding mostly inside it).
    Returns the stack and the probabilities in its (head-to-feet) order."""
    futures: list[Future[np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="radnode-infer") as pool:

        def on_chunk(frames: list[Any]) -> None:
            hu = np.stack([f.grid for f in frames])
            futures.append(pool.submit(finding_probabilities, hu, models, batch_size))

        stack = load_series(paths, compressed=compressed, on_chunk=on_chunk, chunk=batch_size)
        raw = np.concatenate([f.result() for f in futures])
    if stack.order is not None:
        raw = raw[stack.order]
    return stack, raw


def score_finding(
    stack: SliceStack, models: Models, batch_size: int = 64, raw: np.ndarray | None = None
) -> tuple[float, int, np.ndarray]:
    """(study score, driving slice index, per-slice smoothed scores); ``raw``: the slice
    probabilities when already computed (in the stack's order)."""
    if raw is None:
        raw = finding_probabilities(stack.hu, models, batch_size)
    smoothed = smooth(raw)
    driving = int(np.argmax(smoothed))
    return float(smoothed[driving]), driving, smoothed


def analyse(
    stack: SliceStack,
    models: Models,
    threshold: float = 0.5,
    batch_size: int = 64,
    in_scope_regions: tuple[str, ...] = ("chest",),
    finding_raw: np.ndarray | None = None,
) -> StudyAnalysis:
    """Region first; the finding model only for studies in scope (``finding_raw``: its
    slice probabilities when they were computed during decoding)."""
    region, region_probs = classify_region(stack, models, batch_size)
    versions = {"region": models.get("region").version}
    if region not in in_scope_regions:
        return StudyAnalysis(region, region_probs, in_scope=False, model_versions=versions)
    score, driving, smoothed = score_finding(stack, models, batch_size, finding_raw)
    versions["finding"] = models.get("finding").version
    order = np.argsort(-smoothed, kind="stable")
    evidence = [int(i) for i in order[:MAX_EVIDENCE] if smoothed[i] >= threshold] or [driving]
    return StudyAnalysis(
        region,
        region_probs,
        in_scope=True,
        score=score,
        driving_slice=driving,
        slice_scores=[round(float(s), 4) for s in smoothed],
        evidence_slices=sorted(set(evidence)),
        model_versions=versions,
    )
