"""From decoded slices (or radiographs) to one model's study-level answer.

Each model's card says how (:mod:`ai_node.card`): its input, how slice probabilities
aggregate (``max_moving_average``: the maximum over slices of the probabilities smoothed
along z, so a lesion spanning neighbouring slices counts and a single noisy slice does
not; ``mean``; ``top_k_mean``; radiographs: the highest image), whether it scores an
evenly spaced sample of slices (anatomy changes slowly along z), and which slices are
evidence. A multiclass model without a positive label gives a **verdict**, its top label
after aggregation, which other models' body part rules read.

Inference runs in a :class:`ModelRun` per model: on its own thread, fed chunks of
slices while the series is still decoding (TensorFlow and most of numpy run outside the
GIL, decoding mostly inside it), batched, within the card's ``timeout_s`` of inference
time, and with its failure kept to itself.

The shipped models are two such cards; :func:`classify_region`, :func:`score_finding` and
:func:`analyse` are the same steps for the models named ``region`` and ``finding``
(training, retraining and the benchmarks call them).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai_node.card import DEFAULT_THRESHOLD, ModelCard
from ai_node.localise import LocalisationError, Location, locate
from ai_node.models import LoadedModel, ModelTimeout
from ai_node.preprocess import DecodedFile, SliceRef, SliceStack, card_input, load_series

logger = logging.getLogger(__name__)

REGION_SAMPLE = 24
"""Slices the shipped region model sees per study (evenly spaced; its card's ``sample``)."""

SMOOTHING = 3
"""Slices in the shipped finding model's moving average (its card's ``window``)."""

MAX_EVIDENCE = 5
"""Most slices referenced as evidence of a finding (default ``localisation.max_slices``)."""


class Models(Protocol):
    def get(self, name: str) -> LoadedModel: ...


@dataclass
class StudyAnalysis:
    """Everything the SR and the results row report about one model's result for a study.

    ``region`` is the body part verdict that decided whether the model was for the study
    (None when no model's verdict was asked); ``model_versions`` every model that made the
    result (the model itself and the one whose verdict it used).
    """

    region: str | None
    region_probabilities: dict[str, float]
    in_scope: bool
    score: float | None = None
    driving_slice: int | None = None
    slice_scores: list[float] = field(default_factory=list)
    evidence_slices: list[int] = field(default_factory=list)
    model_versions: dict[str, str] = field(default_factory=dict)
    model: str = "finding"
    label: str | None = None
    reason: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    location: Location | None = None


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


def scored_indices(card: ModelCard, n: int) -> np.ndarray:
    """Which of a stack's ``n`` slices the model scores (its card's ``sample``, or all)."""
    sample = card.aggregation.sample if card.aggregation is not None else None
    return sample_indices(n, sample) if sample else np.arange(n)


def aggregate(card: ModelCard, probs: np.ndarray) -> tuple[float, int, np.ndarray]:
    """(study score, index of the driving slice, per-slice scores shown) of one model's
    slice probabilities (head-to-feet order), as its card's ``aggregation`` says."""
    if probs.size == 0:
        raise ValueError("no slice was scored")
    agg = card.aggregation
    if agg is None:  # radiographs: each image stands alone, the highest is the result
        driving = int(np.argmax(probs))
        return float(probs[driving]), driving, probs.astype(np.float64)
    if agg.method == "max_moving_average":
        smoothed = smooth(probs, agg.window)
        driving = int(np.argmax(smoothed))
        return float(smoothed[driving]), driving, smoothed
    driving = int(np.argmax(probs))
    if agg.method == "mean":
        return float(np.mean(probs, dtype=np.float64)), driving, probs.astype(np.float64)
    top = np.sort(probs.astype(np.float64))[::-1][: agg.k]
    return float(top.mean()), driving, probs.astype(np.float64)


def aggregate_classes(card: ModelCard, probs: np.ndarray) -> np.ndarray:
    """Per-label study probabilities from (N, labels) slice probabilities."""
    agg = card.aggregation
    if agg is None:
        return probs.max(axis=0)
    if agg.method == "mean":
        return probs.mean(axis=0)
    if agg.method == "max_moving_average":
        return np.asarray([smooth(probs[:, i], agg.window).max() for i in range(probs.shape[1])])
    k = min(agg.k, probs.shape[0])
    return np.sort(probs, axis=0)[::-1][:k].mean(axis=0)


def verdict(model: LoadedModel, outputs: np.ndarray) -> tuple[str, dict[str, float]]:
    """(top label, probability per label) of a model's aggregated outputs."""
    probs = aggregate_classes(model.card, model.class_probabilities(outputs))
    labels = model.card.outputs.labels
    top = str(labels[int(np.argmax(probs))])
    return top, {str(label): round(float(p), 4) for label, p in zip(labels, probs, strict=True)}


def evidence_of(
    card: ModelCard, slice_scores: np.ndarray, driving: int, threshold: float
) -> list[int]:
    """The evidence slices: up to ``max_slices`` scoring at or above ``threshold``, else
    the driving one (localisation ``evidence_slices``)."""
    if card.localisation.method == "none":
        return []
    order = np.argsort(-slice_scores, kind="stable")
    limit = card.localisation.max_slices
    evidence = [int(i) for i in order[:limit] if slice_scores[i] >= threshold] or [driving]
    return sorted(set(evidence))


def model_input(model: LoadedModel, stack: SliceStack, idx: np.ndarray | None = None) -> Any:
    grids = stack.grid(model.size)
    m1 = stack.monochrome1
    if idx is not None:
        grids = grids[idx]
        m1 = m1[idx] if m1 is not None else None
    return card_input(grids, model.card.input, m1)


def locate_finding(model: LoadedModel, stack: SliceStack, index: int) -> Location | None:
    """The mark of a positive finding on slice ``index`` of the stack, when the model's card
    declares a localisation method (:mod:`ai_node.localise`); None otherwise, and when the
    model cannot be localised (logged: the result stands without its mark)."""
    if not model.card.localisation.marks:
        return None
    ref = stack.refs[index]
    header = stack.headers.get(ref.sop_instance_uid)
    grid = model.size
    rows = int(header.get("Rows", grid)) if header is not None else grid
    columns = int(header.get("Columns", grid)) if header is not None else grid
    try:
        return locate(
            model, model_input(model, stack, np.asarray([index])), index, ref, rows, columns
        )
    except LocalisationError as exc:
        logger.warning("finding not localised", extra={"model": model.key, "error": str(exc)})
        return None


# --------------------------------------------------------------------------- running


class ModelRun:
    """One model's inference over one study: its own thread, chunks in order, a budget
    of ``timeout_s`` seconds of inference, any failure kept here (:attr:`error`)."""

    def __init__(self, model: LoadedModel, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.timeout_s = float(model.card.timeout_s)
        self.error: str | None = None
        self.used_s = 0.0
        self._outputs: list[np.ndarray] = []
        self._futures: list[concurrent.futures.Future[None]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"radnode-{model.name}"[:24]
        )
        self._cancel = threading.Event()
        self._call_started: float | None = None

    def _check(self) -> None:
        spent = self.used_s
        if self._call_started is not None:
            spent += time.perf_counter() - self._call_started
        if self._cancel.is_set() or spent > self.timeout_s:
            raise ModelTimeout(
                f"{self.model.key} exceeded its timeout of {self.timeout_s:g} s of inference"
            )

    def _score(self, grids: np.ndarray, monochrome1: np.ndarray | None) -> None:
        if self.error is not None:
            return
        self._call_started = time.perf_counter()
        try:
            x = card_input(grids, self.model.card.input, monochrome1)
            self._outputs.append(self.model.predict_batched(x, self.batch_size, self._check))
        except ModelTimeout as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one model's failure is its own result
            self.error = f"{self.model.key} failed: {type(exc).__name__}: {exc}"[:2000]
        finally:
            self.used_s += time.perf_counter() - self._call_started
            self._call_started = None

    def submit(self, grids: np.ndarray, monochrome1: np.ndarray | None = None) -> None:
        """Score these slices (N, S, S) on the model's thread, after the ones before."""
        self._futures.append(self._pool.submit(self._score, grids, monochrome1))

    def submit_known(self, outputs: np.ndarray) -> None:
        """Take the outputs (N, units) of slices scored already (while the study arrived,
        :mod:`ai_node.prefetch`), in their place among the ones submitted."""
        self._futures.append(self._pool.submit(self._outputs.append, outputs))

    def finish(self) -> np.ndarray | None:
        """The outputs (N, units) of every slice submitted, in order; None when the model
        failed or ran out of time (:attr:`error` says which). Waits at most the rest of the
        budget: a model stuck inside one call is left behind, its result failed."""
        remaining = max(0.0, self.timeout_s - self.used_s) + 1.0
        _, pending = concurrent.futures.wait(self._futures, timeout=remaining)
        if pending:
            self._cancel.set()
            self.error = self.error or (
                f"{self.model.key} exceeded its timeout of {self.timeout_s:g} s of inference"
            )
            self._pool.shutdown(wait=False, cancel_futures=True)
            return None
        self._pool.shutdown(wait=True)
        if self.error is not None:
            return None
        if not self._outputs:
            return np.zeros((0, max(self.model.card.output_widths())), np.float32)
        return np.concatenate(self._outputs, axis=0)

    def fail(self, reason: str) -> None:
        self.error = self.error or reason
        self._cancel.set()


def decode_and_run(
    paths: Sequence[Path],
    streaming: Sequence[ModelRun],
    *,
    size: int,
    extra_sizes: Sequence[int] = (),
    batch_size: int = 64,
    compressed: bool = True,
    decoded: Mapping[Path, DecodedFile] | None = None,
    known: Mapping[str, Mapping[SliceRef, np.ndarray]] | None = None,
) -> SliceStack:
    """Decode a series onto the grids the models need and feed every ``streaming`` run the
    decoded chunks as they come (in decoding order: ``SliceStack.order`` maps them to the
    head-to-feet order the stack has); ``decoded``: files decoded already (on these grids);
    ``known``: per model key, the outputs of slices it scored already, taken instead of
    scoring them again. Raises :class:`ai_node.preprocess.InputError` when the series
    cannot be decoded."""

    def submit(run: ModelRun, frames: list[Any]) -> None:
        s = run.model.size
        grids = np.stack([f.grid if s == size else f.extra[s] for f in frames])
        m1 = np.asarray([f.monochrome1 for f in frames], dtype=bool)
        run.submit(grids, m1 if m1.any() else None)

    def on_chunk(frames: list[Any]) -> None:
        for run in streaming:
            done = (known or {}).get(run.model.key, {})
            start = 0
            while start < len(frames):
                have = frames[start].ref in done
                end = start + 1
                while end < len(frames) and (frames[end].ref in done) == have:
                    end += 1
                if have:
                    run.submit_known(np.stack([done[f.ref] for f in frames[start:end]]))
                else:
                    submit(run, frames[start:end])
                start = end

    return load_series(
        paths,
        size=size,
        compressed=compressed,
        on_chunk=on_chunk if streaming else None,
        chunk=batch_size,
        extra_sizes=extra_sizes,
        decoded=decoded,
    )


def in_stack_order(outputs: np.ndarray, stack: SliceStack) -> np.ndarray:
    """Outputs computed in decoding order, reordered head to feet."""
    return outputs[stack.order] if stack.order is not None else outputs


# --------------------------------------------------------------------------- the shipped pair


def classify_region(
    stack: SliceStack, models: Models, batch_size: int = 64
) -> tuple[str, dict[str, float]]:
    """The verdict of the model named ``region`` on a stack (its card's sample of slices)."""
    model = models.get("region")
    idx = scored_indices(model.card, len(stack))
    return verdict(model, model.predict_batched(model_input(model, stack, idx), batch_size))


def finding_probabilities(hu: np.ndarray, models: Models, batch_size: int = 64) -> np.ndarray:
    """Per-slice probabilities of the ``finding`` model's positive label for (N, S, S) HU."""
    model = models.get("finding")
    x = card_input(hu, model.card.input)
    return np.asarray(model.positive(model.predict_batched(x, batch_size)))


def decode_and_score(
    paths: Sequence[Path], models: Models, batch_size: int = 64, compressed: bool = True
) -> tuple[SliceStack, np.ndarray]:
    """Decode a series while the ``finding`` model scores it; the stack and the slice
    probabilities in its (head-to-feet) order."""
    model = models.get("finding")
    run = ModelRun(model, batch_size)
    stack = decode_and_run(
        paths, [run], size=model.size, batch_size=batch_size, compressed=compressed
    )
    outputs = run.finish()
    if outputs is None:
        raise RuntimeError(run.error)
    return stack, np.asarray(model.positive(in_stack_order(outputs, stack)))


def score_finding(
    stack: SliceStack, models: Models, batch_size: int = 64, raw: np.ndarray | None = None
) -> tuple[float, int, np.ndarray]:
    """(study score, driving slice index, per-slice scores) of the ``finding`` model;
    ``raw``: its slice probabilities when already computed (in the stack's order)."""
    model = models.get("finding")
    if raw is None:
        raw = finding_probabilities(stack.grid(model.size), models, batch_size)
    return aggregate(model.card, raw)


def analyse(
    stack: SliceStack,
    models: Models,
    threshold: float | None = None,
    batch_size: int = 64,
    in_scope_regions: tuple[str, ...] | None = None,
    finding_raw: np.ndarray | None = None,
) -> StudyAnalysis:
    """The ``finding`` model's result on a stack, its body part rule decided by the
    ``region`` model's verdict (``in_scope_regions`` overrides the rule's list;
    ``finding_raw``: its slice probabilities when computed during decoding)."""
    finding = models.get("finding")
    rule = finding.card.applicability.body_part
    accepted = in_scope_regions or (tuple(rule.any_of) if rule is not None else ())
    region, region_probs = classify_region(stack, models, batch_size)
    versions = {"region": models.get("region").version}
    if region not in accepted:
        return StudyAnalysis(
            region,
            region_probs,
            in_scope=False,
            model_versions={**versions, finding.name: finding.version},
            model=finding.name,
            label=f"out of scope: {region}",
        )
    card = finding.card
    if threshold is None:
        own = card.operating_threshold
        threshold = own if own is not None else DEFAULT_THRESHOLD
    score, driving, scores = score_finding(stack, models, batch_size, finding_raw)
    versions[finding.name] = finding.version
    label = card.label_for(score, threshold)
    located = locate_finding(finding, stack, driving) if score >= threshold else None
    return StudyAnalysis(
        region,
        region_probs,
        in_scope=True,
        score=score,
        driving_slice=driving,
        slice_scores=[round(float(s), 4) for s in scores],
        evidence_slices=evidence_of(card, scores, driving, threshold),
        model_versions=versions,
        model=finding.name,
        label=label,
        location=located,
    )
