"""The analysis of one study version, as the worker runs it: the stages in one place.

    select series -> decode + preprocess -> region model -> finding model
        -> SR (highdicom) -> store it (source "ai", not analysed again) -> results row

Each stage is a plain function in its own module (:mod:`ai_node.preprocess`,
:mod:`ai_node.analysis`, :mod:`ai_node.sr`, :mod:`ai_node.results`); this class
only wires them and records timings. Idempotent: a retried job rebuilds the same
SR (deterministic UIDs, stored once) and updates the same results row.

Input the node cannot analyse (no CT series, undecodable pixels) is a result with
status ``failed`` and the reason, not a retry; anything else (store or index
trouble) raises so the queue retries it and, after the last attempt, parks it.
A failed result records the model versions active when it failed, so the studies a
broken model failed can be found and run again (:mod:`ai_node.requeue`).

The finding threshold is the active finding model's own operating threshold (its card's
``operating_point.threshold``, chosen when it was trained) and the node's
``finding_threshold`` only for a model whose card has none; it follows the model when a
new version is activated.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_node.analysis import StudyAnalysis, analyse, decode_and_score
from ai_node.labels import REGION_LABELS, finding_label
from ai_node.preprocess import InputError, SliceStack, load_datasets, select_series
from ai_node.registry import ModelRegistry, ModelSet, RegistryError
from ai_node.results import ResultStore
from ai_node.sr import ReportContext, build_sr, model_version_key
from ai_node.synth import StudySpec, generate_study
from radnode_core import __version__
from radnode_core.index import utcnow
from radnode_core.jobs import Job
from radnode_core.node import Node

logger = logging.getLogger(__name__)


def encode(dataset: Any) -> bytes:
    """The dataset as explicit VR little endian bytes (what a C-STORE carries)."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, dataset)
    return buf.getvalue()


class AnalysisPipeline:
    """The worker's processor: ``pipeline(job)`` analyses one study version."""

    def __init__(self, node: Node, models: ModelSet | None = None) -> None:
        self.node = node
        s = node.settings
        self.models = models or ModelSet(ModelRegistry(s.models_dir))
        self.results = ResultStore(node.index)
        node.queue.on_give_up(ResultStore.fail_abandoned)
        self.default_threshold = float(s.finding_threshold)
        self.batch_size = int(s.inference_batch_size)
        self.device_uid = generate_uid(entropy_srcs=["radnode-device", s.ae_title])

    def __call__(self, job: Job) -> None:
        self.process(job)

    @property
    def threshold(self) -> float:
        """The operating threshold of the active finding model (module docstring)."""
        own = self.models.get("finding").operating_threshold
        return own if own is not None else self.default_threshold

    def active_versions(self) -> str | None:
        """The active models as ``results.model_version`` spells them, read from the
        registry (a model that fails to load still has a version)."""
        registry = self.models.registry
        try:
            return ",".join(f"{t}:{registry.active_version(t)}" for t in ("finding", "region"))
        except RegistryError:
            return None

    def warm_up(self) -> None:
        """Load both models, trace their inference functions and build one throwaway SR,
        so the first study does not pay for it (the worker calls this when it starts)."""

        started = time.perf_counter()
        _, datasets = generate_study(
            StudySpec(region="chest", slices=2, seed=0, rows=32, columns=32)
        )
        headers = list(datasets)
        stack = load_datasets(headers)
        threshold = self.threshold
        analysis = analyse(stack, self.models, threshold, self.batch_size, REGION_LABELS)
        refs = stack.refs[:1]
        build_sr(
            headers,
            analysis,
            refs,
            self.context(analysis, threshold),
            str(headers[0].StudyInstanceUID),
            0,
        )
        logger.info(
            "analysis pipeline warmed up",
            extra={"seconds": round(time.perf_counter() - started, 2)},
        )

    def _open_header(self, relative: str) -> Any:
        return self.node.store.open_dataset(str(relative), stop_before_pixels=True)

    def load(self, study_uid: str) -> tuple[str, SliceStack, np.ndarray]:
        """The series UID, its slices and their finding probabilities (in stack order)."""
        instances = self.node.index.instances_of_study(study_uid)
        choice = select_series(instances, self._open_header)
        if choice is None:
            classes = sorted({str(r["sop_class_uid"]) for r in instances})
            raise InputError(
                f"no axial CT series in the study (SOP classes: {', '.join(classes) or 'none'})"
            )
        paths = [self.node.store.path_of(str(p)) for p in choice.paths]
        stack, raw = decode_and_score(paths, self.models, self.batch_size, choice.compressed)
        return choice.series_uid, stack, raw

    def context(self, analysis: StudyAnalysis, threshold: float) -> ReportContext:
        finding = self.models.get("finding")
        region = self.models.get("region")
        return ReportContext(
            node_name=self.node.settings.ae_title,
            device_uid=self.device_uid,
            software_version=f"radnode {__version__}",
            finding_model=finding.name,
            finding_version=finding.version,
            region_model=region.name,
            region_version=region.version,
            threshold=threshold,
        )

    def queue_for_pacs(self, study_uid: str, sr_uid: str | None) -> None:
        """Hand the study's SR (and originals) to the node's PACS delivery, in the same step
        that stored the SR, so a result is never produced without being queued."""
        if self.node.deliver is not None:
            self.node.deliver(study_uid, sr_uid)

    def process(self, job: Job) -> dict[str, Any]:
        started = time.perf_counter()
        self.results.upsert(job.study_uid, job.version, job.id, status="running", error=None)
        try:
            return self._process(job, started)
        except InputError as exc:
            logger.warning(
                "study cannot be analysed", extra={"study_uid": job.study_uid, "error": str(exc)}
            )
            self.results.upsert(
                job.study_uid,
                job.version,
                job.id,
                status="failed",
                error=str(exc),
                finished_at=utcnow(),
                score=None,
                label=None,
                model_version=self.active_versions(),
                details={
                    "timings": {"total_s": round(time.perf_counter() - started, 3)},
                    "attempts": job.attempts,
                },
            )
            self.queue_for_pacs(job.study_uid, None)
            return {"status": "failed", "error": str(exc)}
        except Exception as exc:
            self.results.upsert(
                job.study_uid,
                job.version,
                job.id,
                status="failed",
                error=f"attempt {job.attempts}: {type(exc).__name__}: {exc}"[:4000],
                finished_at=utcnow(),
                model_version=self.active_versions(),
            )
            raise

    def _process(self, job: Job, started: float) -> dict[str, Any]:
        series_uid, stack, raw = self.load(job.study_uid)
        decoded = time.perf_counter()
        threshold = self.threshold
        analysis = analyse(stack, self.models, threshold, self.batch_size, finding_raw=raw)
        inferred = time.perf_counter()
        if analysis.in_scope and analysis.driving_slice is not None:
            refs = [stack.refs[i] for i in analysis.evidence_slices]
        else:
            refs = [stack.refs[len(stack) // 2]]
        # The image library lists the slices the SR references plus the series' first and
        # last slice (its extent): TID 1600 needs the referenced images; listing all 300
        # would cost seconds of SR building for nothing a viewer shows.
        library = [stack.refs[0], *refs, stack.refs[-1]]
        uids = list(dict.fromkeys(r.sop_instance_uid for r in library))
        headers = [stack.headers[u] for u in uids if u in stack.headers]
        context = self.context(analysis, threshold)
        sr = build_sr(headers, analysis, refs, context, job.study_uid, job.version)
        stored = self.node.ingestor.ingest(
            encode(sr), ExplicitVRLittleEndian, source="ai", analyze=False
        )
        self.queue_for_pacs(job.study_uid, str(sr.SOPInstanceUID))
        done = time.perf_counter()
        if analysis.in_scope:
            status = "done"
            label = finding_label(analysis.score or 0.0, threshold)
        else:
            status, label = "out_of_scope", f"out of scope: {analysis.region}"
        driving_uid = (
            stack.refs[analysis.driving_slice].sop_instance_uid
            if analysis.driving_slice is not None
            else None
        )
        timings = {
            "decode_s": round(decoded - started, 3),
            "inference_s": round(inferred - decoded, 3),
            "sr_s": round(done - inferred, 3),
            "total_s": round(done - started, 3),
        }
        details = {
            "timings": timings,
            "series_uid": series_uid,
            "slices": len(stack),
            "skipped_instances": stack.skipped[:20],
            "region": analysis.region,
            "region_probabilities": analysis.region_probabilities,
            "driving_slice": analysis.driving_slice,
            "driving_sop_instance_uid": driving_uid,
            "evidence_sop_instance_uids": [r.sop_instance_uid for r in refs],
            "threshold": threshold,
            "models": analysis.model_versions,
            "sr_duplicate": stored.duplicate,
            "attempts": job.attempts,
            "slice_scores": analysis.slice_scores,
        }
        self.results.upsert(
            job.study_uid,
            job.version,
            job.id,
            status=status,
            score=round(float(analysis.score), 6) if analysis.score is not None else None,
            label=label,
            model_version=model_version_key(analysis),
            sr_sop_instance_uid=str(sr.SOPInstanceUID),
            error=None,
            finished_at=utcnow(),
            details=details,
        )
        logger.info(
            "study analysed",
            extra={
                "study_uid": job.study_uid,
                "status": status,
                "score": analysis.score,
                "total_s": timings["total_s"],
            },
        )
        return {"status": status, "score": analysis.score, "sr": str(sr.SOPInstanceUID)}
