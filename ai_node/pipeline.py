"""The analysis of one study version, as the worker runs it: the stages in one place.

    while the study arrives (:mod:`ai_node.prefetch`): decode each new instance, and score
        batches of them with the models that score every slice
    route (each active model's card against the study's series)
        -> per series: decode once what was not decoded ahead, or changed since (every
           grid size its models need), models score chunks while it decodes (taking the
           outputs computed ahead) -> sampled models and verdicts -> body part rules
        -> per model: aggregate -> SR (highdicom; source "ai", not analysed again)
           -> its results row

Every model that reports (a positive label on its card) and is for the study gets its own
results row and its own SR. A model that fails, or runs past its card's ``timeout_s``,
gets a ``failed`` row with the reason; the others are unaffected. A model whose body part
rule excludes the study gets an ``out_of_scope`` row and an SR saying "not evaluated"; a
study no model is for gets one ``out_of_scope`` row (model "") with the reason.

Each model reports at its own operating threshold: its card's (the retraining's
``operating_point.threshold``, else ``outputs.threshold``) and the node's
``finding_threshold`` for a card that has none; it follows the model when another version
is activated. A study's own row (failed, or no model for it) records the models active
then, so the studies a broken model failed can be found and run again
(:mod:`ai_node.requeue`).

Each stage is a plain function in its own module (:mod:`ai_node.routing`,
:mod:`ai_node.preprocess`, :mod:`ai_node.analysis`, :mod:`ai_node.sr`,
:mod:`ai_node.results`); this class only wires them and records timings. Idempotent: a
retried job rebuilds the same SRs (deterministic UIDs, stored once) and updates the same
rows. Store or index trouble raises, so the queue retries the job and, after the last
attempt, parks it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid
from pydicom.valuerep import AMBIGUOUS_VR, VR

from ai_node.analysis import (
    ModelRun,
    StudyAnalysis,
    aggregate,
    aggregate_classes,
    decode_and_run,
    evidence_of,
    in_stack_order,
    locate_finding,
    scored_indices,
    verdict,
)
from ai_node.card import ModelCard
from ai_node.models import LoadedModel
from ai_node.monitoring import input_statistics, last_received, observe
from ai_node.prefetch import DecodedCache, Entry, Plan, Prefetcher, known_outputs, usable
from ai_node.preprocess import InputError, SliceStack, load_datasets, on_grids
from ai_node.registry import ModelRegistry, ModelSet
from ai_node.results import ResultStore
from ai_node.routing import Assignment, assign, describe_series, route
from ai_node.sr import build_sr, context_for, evidence_of_stack, model_version_key
from ai_node.synth import StudySpec, generate_study
from radnode_core import __version__
from radnode_core.index import utcnow
from radnode_core.jobs import Job
from radnode_core.node import Node, ResultSummary

logger = logging.getLogger(__name__)

STUDY = ""
"""The model name of a study's own row: while its job runs, and when no model is for it."""


def encode(dataset: Any) -> bytes:
    """The dataset as explicit VR little endian bytes (what a C-STORE carries).

    A dataset built in memory has no original encoding, so pydicom's writer runs its
    ambiguous-VR correction over each nested dataset again at every level of nesting (a
    quarter of the time of a 300-reference SR). When no element's VR is ambiguous
    (PS3.5 Annex A: "US or SS" and the like) there is nothing to correct: every dataset of
    the tree is declared already in this encoding, and the writer skips that pass."""
    _declare_explicit_little_endian(dataset)
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, dataset)
    return buf.getvalue()


_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)


def _declare_explicit_little_endian(dataset: Dataset) -> None:
    """Declare every dataset of the tree as explicit VR little endian in its own character
    set (:meth:`pydicom.dataset.Dataset.set_original_encoding`), unless an element is still
    raw or has an ambiguous VR: then nothing is declared and pydicom corrects as usual."""
    datasets = []
    pending = [dataset]
    while pending:
        ds = pending.pop()
        datasets.append(ds)
        for elem in ds._dict.values():
            if isinstance(elem, RawDataElement) or elem.VR in AMBIGUOUS_VR:
                return
            if elem.VR == VR.SQ:
                pending.extend(elem.value)
    for ds in datasets:
        own = _SPECIFIC_CHARACTER_SET in ds._dict
        ds.set_original_encoding(False, True, ds._character_set if own else ds._parent_encoding)


def _modality(stack: SliceStack) -> str | None:
    """The analysed series' Modality (from its first slice's header)."""
    first = stack.headers.get(stack.refs[0].sop_instance_uid) if len(stack) else None
    if first is None:
        return None
    return str(first.get("Modality", "")) or None


@dataclass(eq=False)
class _Task:
    """One model on one study: its assignment, the loaded model, its run and outcome."""

    assignment: Assignment
    model: LoadedModel | None = None
    run: ModelRun | None = None
    stack: SliceStack | None = None
    outputs: np.ndarray | None = None  # head-to-feet order, the scored slices only
    scored: np.ndarray | None = None  # which stack slices ``outputs`` are
    error: str | None = None
    decode_s: float = 0.0
    prefetched: int = 0  # files decoded while the study arrived
    scored_ahead: int = 0  # slices the model scored while the study arrived

    @property
    def card(self) -> ModelCard:
        return self.assignment.card

    def fail(self, reason: str) -> None:
        self.error = self.error or reason
        if self.run is not None:
            self.run.fail(reason)


@dataclass
class _Verdict:
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    card: ModelCard | None = None
    version: str | None = None
    error: str | None = None


class AnalysisPipeline:
    """The worker's processor: ``pipeline(job)`` analyses one study version."""

    def __init__(self, node: Node, models: ModelSet | None = None) -> None:
        self.node = node
        s = node.settings
        self.models = models or ModelSet(ModelRegistry(s.models_dir))
        self.results = ResultStore(node.index)
        node.queue.on_give_up(ResultStore.fail_abandoned)
        self.batch_size = int(s.inference_batch_size)
        self.default_threshold = float(s.finding_threshold)
        self.device_uid = generate_uid(entropy_srcs=["radnode-device", s.ae_title])
        self.prefetched = DecodedCache(int(s.prefetch_max_mb) * 2**20, float(s.prefetch_ttl_s))
        self.follower: Prefetcher | None = None
        if s.prefetch_max_mb > 0:
            self.follower = Prefetcher(
                node.index,
                lambda relative: node.store.path_of(relative),
                self.prefetched,
                self.prefetch_plan,
                poll_s=float(s.prefetch_poll_s),
            )

    def __call__(self, job: Job) -> None:
        self.process(job)

    # -- warm-up ---------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load every active model and trace its inference function on a tiny synthetic
        input (and build one throwaway SR), so the first study does not pay for it (the
        worker calls this when it starts)."""
        started = time.perf_counter()
        _, datasets = generate_study(
            StudySpec(region="chest", slices=2, seed=0, rows=32, columns=32)
        )
        headers = list(datasets)
        for card in self.models.active_cards():
            try:
                model = self.models.get(card.name)
                stack = load_datasets(headers, model.size)
                run = ModelRun(model, self.batch_size)
                run.submit(stack.hu)
                outputs = run.finish()
                if card.reports and outputs is not None:
                    analysis = self._analysis(model, stack, outputs, np.arange(len(stack)), None)
                    build_sr(
                        headers,
                        analysis,
                        stack.refs[:1],
                        self._context(model, None),
                        str(headers[0].StudyInstanceUID),
                        0,
                    )
            except Exception:
                logger.exception("model warm-up failed", extra={"model": card.name})
        logger.info(
            "analysis pipeline warmed up",
            extra={"seconds": round(time.perf_counter() - started, 2)},
        )

    def prefetch_plan(self) -> Plan | None:
        """What to decode of a study while it arrives: the SOP classes of the active models
        and the grid sizes of those loaded (None before any is: the first study waits for
        its job)."""
        cards = self.models.active_cards()
        loaded = self.models.loaded()
        models = [loaded[c.name] for c in cards if c.name in loaded]
        if not models:
            return None
        classes = frozenset(uid for c in cards for uid in c.applicability.sop_classes)
        streaming = tuple(
            m
            for m in models
            if m.version == self.models.registry.active_version(m.name)
            and (m.card.aggregation is None or not m.card.aggregation.sample)
        )
        return Plan(classes, tuple(dict.fromkeys(m.size for m in models)), streaming)

    # -- helpers ---------------------------------------------------------------------

    def _open_header(self, relative: str) -> Any:
        return self.node.store.open_dataset(str(relative), stop_before_pixels=True)

    def threshold_of(self, model: LoadedModel) -> float:
        """A model's operating threshold (module docstring)."""
        own = model.operating_threshold
        return own if own is not None else self.default_threshold

    @property
    def threshold(self) -> float:
        """The operating threshold of the active model named ``finding`` (the shipped one)."""
        return self.threshold_of(self.models.get("finding"))

    def active_versions(self) -> str | None:
        """Every active model as ``results.model_version`` spells them (from the registry:
        a model that fails to load still has a version)."""
        try:
            active = self.models.registry.active()
        except (OSError, ValueError):
            return None
        return ",".join(f"{name}:{version}" for name, version in sorted(active.items())) or None

    def _context(self, model: LoadedModel, decider: _Verdict | None) -> Any:
        return context_for(
            model.card,
            model.version,
            self.threshold_of(model),
            node_name=self.node.settings.ae_title,
            device_uid=self.device_uid,
            software_version=f"radnode {__version__}",
            region=decider.card if decider is not None else None,
            region_version=decider.version if decider is not None else None,
        )

    def queue_for_pacs(self, study_uid: str, sr_uid: str | None, result: ResultSummary) -> None:
        """Hand the study's SR (and originals) to the node's PACS delivery, in the same step
        that stored the SR, so a result is never produced without being queued."""
        if self.node.deliver is not None:
            self.node.deliver(study_uid, sr_uid, result)

    # -- the job ---------------------------------------------------------------------

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
            self.queue_for_pacs(job.study_uid, None, ResultSummary())
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
        taken = self.prefetched.take(job.study_uid)
        try:
            return self._analyse(job, started, taken)
        finally:
            self.prefetched.release(job.study_uid)

    def _analyse(self, job: Job, started: float, taken: dict[str, Entry]) -> dict[str, Any]:
        instances = self.node.index.instances_of_study(job.study_uid)
        active = self.models.active_cards()
        routed = route([c for c in active if c.reports], instances, self._open_header)
        if not routed.assignments:
            return self._no_model(job, started, routed.reason())
        tasks = [_Task(a) for a in routed.assignments]
        deciders = self._decider_tasks(tasks, active, instances)
        groups: dict[tuple[str, ...], list[_Task]] = {}
        for task in dict.fromkeys([*deciders.values(), *tasks]):
            groups.setdefault(tuple(str(p) for p in task.assignment.paths), []).append(task)
        for group in groups.values():
            self._run_group(group, taken, instances)
        verdicts = {name: self._verdict(task) for name, task in deciders.items()}
        outcome: dict[str, Any] = {}
        for task in tasks:
            outcome[task.card.name] = self._report(job, task, verdicts, started)
        self.results.clear_study_row(job.study_uid, job.version)
        lead = max(
            outcome.values(),
            key=lambda o: (o.get("score") is not None, o.get("score") or 0.0),
        )
        return {**lead, "models": outcome}

    def _no_model(self, job: Job, started: float, reason: str) -> dict[str, Any]:
        self.results.upsert(
            job.study_uid,
            job.version,
            job.id,
            status="out_of_scope",
            score=None,
            label="out of scope",
            model_version=self.active_versions(),
            error=None,
            finished_at=utcnow(),
            details={
                "reason": reason,
                "timings": {"total_s": round(time.perf_counter() - started, 3)},
                "attempts": job.attempts,
            },
        )
        self.queue_for_pacs(job.study_uid, None, ResultSummary())
        logger.info("no model is for the study", extra={"study_uid": job.study_uid})
        return {"status": "out_of_scope", "reason": reason, "sr": None, "models": {}}

    def _decider_tasks(
        self, tasks: Sequence[_Task], active: Sequence[ModelCard], instances: Sequence[Any]
    ) -> dict[str, _Task]:
        """A task for each model whose verdict a body part rule asks for."""
        by_name = {c.name: c for c in active}
        wanted = {
            rule.model
            for t in tasks
            if (rule := t.card.applicability.body_part) is not None and rule.source == "model"
        }
        out: dict[str, _Task] = {}
        series = None
        reporting = {t.card.name: t for t in tasks}
        for name in sorted(n for n in wanted if n):
            card = by_name.get(name)
            if card is None:
                continue
            if name in reporting:  # a reporting model's verdict: run it once
                out[name] = reporting[name]
                continue
            if series is None:
                wanted_classes = {u for c in active for u in c.applicability.sop_classes}
                series = describe_series(instances, self._open_header, wanted_classes)
            result = assign(card, series)
            if isinstance(result, str):
                continue
            out[name] = _Task(result)
        return out

    def _run_group(
        self, group: list[_Task], taken: dict[str, Entry], instances: Sequence[dict[str, Any]]
    ) -> None:
        """Decode the files of one assignment once (those decoded while the study arrived
        and unchanged since are taken as they are) and run every model of the group."""
        for task in group:
            try:
                task.model = self.models.get(task.card.name)
            except Exception as exc:  # noqa: BLE001 - a model that cannot load fails alone
                task.error = f"{task.card.key} cannot be loaded: {type(exc).__name__}: {exc}"
                logger.error("model cannot be loaded", extra={"model": task.card.name})
        ready = [t for t in group if t.model is not None]
        if not ready:
            return
        for task in ready:
            assert task.model is not None
            task.run = ModelRun(task.model, self.batch_size)
        streaming = [
            t for t in ready if t.card.aggregation is None or not t.card.aggregation.sample
        ]
        sampled = [t for t in ready if t not in streaming]
        sizes = list(dict.fromkeys(t.model.size for t in ready if t.model is not None))
        first = group[0].assignment
        decode_started = time.perf_counter()
        wanted = {str(p) for p in first.paths}
        reusable = usable(taken, [r for r in instances if str(r["path"]) in wanted])
        decoded = {}
        for relative, entry in reusable.items():
            on_sizes = on_grids(entry.decoded, sizes[0], sizes[1:])
            if on_sizes is not None:
                decoded[self.node.store.path_of(relative)] = on_sizes
        known = known_outputs(reusable.values())
        try:
            stack = decode_and_run(
                [self.node.store.path_of(str(p)) for p in first.paths],
                [t.run for t in streaming if t.run is not None],
                size=sizes[0],
                extra_sizes=sizes[1:],
                batch_size=self.batch_size,
                compressed=first.compressed,
                decoded=decoded,
                known=known,
            )
        except InputError as exc:
            for task in ready:
                task.fail(str(exc))
                if task.run is not None:
                    task.run.finish()
            return
        decode_s = time.perf_counter() - decode_started
        for task in sampled:
            assert task.run is not None and task.model is not None
            idx = scored_indices(task.card, len(stack))
            m1 = stack.monochrome1[idx] if stack.monochrome1 is not None else None
            task.run.submit(stack.grid(task.model.size)[idx], m1)
            task.scored = idx
        for task in ready:
            assert task.run is not None
            task.stack, task.decode_s = stack, decode_s
            task.prefetched = len(decoded)
            if task in streaming and task.model is not None:
                task.scored_ahead = len(known.get(task.model.key, {}))
            outputs = task.run.finish()
            if outputs is None:
                task.fail(task.run.error or "inference failed")
                continue
            if task in streaming:
                outputs = in_stack_order(outputs, stack)
                task.scored = np.arange(len(stack))
            task.outputs = outputs

    def _verdict(self, task: _Task) -> _Verdict:
        if task.error is not None or task.outputs is None or task.model is None:
            return _Verdict(None, error=task.error or "no output")
        if task.outputs.shape[0] == 0:
            return _Verdict(None, error=f"{task.card.key} scored no slice")
        label, probs = verdict(task.model, task.outputs)
        return _Verdict(label, probs, task.card, task.model.version)

    def _analysis(
        self,
        model: LoadedModel,
        stack: SliceStack,
        outputs: np.ndarray,
        scored: np.ndarray,
        decider: _Verdict | None,
    ) -> StudyAnalysis:
        card = model.card
        versions = {model.name: model.version}
        if decider is not None and decider.card is not None and decider.version is not None:
            versions[decider.card.name] = decider.version
        probs = np.asarray(model.positive(outputs))
        score, local, shown = aggregate(card, probs)
        driving = int(scored[local])
        threshold = self.threshold_of(model)
        evidence = [int(scored[i]) for i in evidence_of(card, shown, local, threshold)]
        per_label = {}
        if card.task != "binary" or outputs.shape[1] > 1:
            labels = card.outputs.labels
            per_label = {
                str(label): round(float(p), 4)
                for label, p in zip(
                    labels,
                    aggregate_classes(card, model.class_probabilities(outputs)),
                    strict=True,
                )
            }
        located = locate_finding(model, stack, driving) if score >= threshold else None
        return StudyAnalysis(
            decider.label if decider is not None else None,
            decider.probabilities if decider is not None else {},
            in_scope=True,
            score=score,
            driving_slice=driving,
            slice_scores=[round(float(s), 4) for s in shown],
            evidence_slices=evidence,
            model_versions=versions,
            model=model.name,
            label=card.label_for(score, threshold),
            probabilities=per_label,
            location=located,
        )

    def _report(
        self, job: Job, task: _Task, verdicts: dict[str, _Verdict], started: float
    ) -> dict[str, Any]:
        """Decide, build and store one model's SR, and write its results row."""
        card = task.card
        rule = card.applicability.body_part
        decider: _Verdict | None = None
        if rule is not None and rule.source == "model" and task.error is None:
            decider = verdicts.get(str(rule.model))
            if decider is None:
                task.fail(
                    f"its body part rule needs the verdict of model {rule.model!r}, which is "
                    "not active or not for this study"
                )
            elif decider.error is not None:
                task.fail(f"the body part model {rule.model} failed: {decider.error}")
        if task.error is not None or task.model is None or task.stack is None:
            return self._failed(job, task, started)
        model, stack = task.model, task.stack
        assert task.outputs is not None and task.scored is not None
        infer_s = task.run.used_s if task.run is not None else 0.0
        if decider is not None and rule is not None and not rule.accepts(decider.label):
            versions = {model.name: model.version}
            if decider.card is not None and decider.version is not None:
                versions[decider.card.name] = decider.version
            reason = (
                f"body part {decider.label} ({rule.model} {decider.version}); "
                f"{model.name} is for {', '.join(rule.any_of)}"
            )
            analysis = StudyAnalysis(
                decider.label,
                decider.probabilities,
                in_scope=False,
                model_versions=versions,
                model=model.name,
                label=f"out of scope: {decider.label}",
                reason=reason,
            )
        elif task.outputs.shape[0] == 0:
            task.fail(f"{card.key} scored no slice")
            return self._failed(job, task, started)
        else:
            analysis = self._analysis(model, stack, task.outputs, task.scored, decider)
        inferred = time.perf_counter()
        if analysis.in_scope and analysis.driving_slice is not None and analysis.evidence_slices:
            refs = [stack.refs[i] for i in analysis.evidence_slices]
        else:
            refs = [stack.refs[len(stack) // 2]]
        headers, library = evidence_of_stack(stack, refs, analysis.location)
        try:
            sr = build_sr(
                headers,
                analysis,
                refs,
                self._context(model, decider),
                job.study_uid,
                job.version,
                library=library,
            )
        except ValueError as exc:
            task.fail(f"{card.key}: its SR cannot be built: {exc}")
            return self._failed(job, task, started)
        score = round(float(analysis.score), 6) if analysis.score is not None else None
        modality = _modality(stack)
        stored = self.node.ingestor.ingest_built(encode(sr), source="ai", analyze=False)
        made_by = sorted(analysis.model_versions.items())
        models = tuple(f"{name}/{version}" for name, version in made_by)
        summary = ResultSummary(analysis.label, score, models, modality)
        self.queue_for_pacs(job.study_uid, str(sr.SOPInstanceUID), summary)
        done = time.perf_counter()
        status = "done" if analysis.in_scope else "out_of_scope"
        driving_uid = (
            stack.refs[analysis.driving_slice].sop_instance_uid
            if analysis.driving_slice is not None
            else None
        )
        timings = {
            "decode_s": round(task.decode_s, 3),
            "inference_s": round(infer_s, 3),
            "sr_s": round(done - inferred, 3),
            "total_s": round(done - started, 3),
        }
        details = {
            "model": model.name,
            "timings": timings,
            "series_uid": task.assignment.series_uids[0],
            "series_uids": list(task.assignment.series_uids),
            "slices": len(stack),
            "prefetched_instances": task.prefetched,
            "prefetched_scored_slices": task.scored_ahead,
            "skipped_instances": stack.skipped[:20],
            "region": analysis.region,
            "region_probabilities": analysis.region_probabilities,
            "driving_slice": analysis.driving_slice,
            "driving_sop_instance_uid": driving_uid,
            "evidence_sop_instance_uids": [r.sop_instance_uid for r in refs],
            "threshold": self.threshold_of(model),
            "positive_label": card.outputs.positive_label,
            "labels": list(card.label_vocabulary),
            "probabilities": analysis.probabilities,
            "models": analysis.model_versions,
            "model_ids": list(summary.models),
            "modality": modality,
            "sr_duplicate": stored.duplicate,
            "attempts": job.attempts,
            "slice_scores": analysis.slice_scores,
        }
        if analysis.reason:
            details["reason"] = analysis.reason
        details["inputs"] = input_statistics(stack, modality)
        received = last_received(self.node.index, job.study_uid)
        if received is not None:
            details["time_to_result_s"] = round(max(0.0, time.time() - received), 3)
        if analysis.location is not None:
            details["location"] = analysis.location.as_details()
        self.results.upsert(
            job.study_uid,
            job.version,
            job.id,
            model_name=model.name,
            status=status,
            score=score,
            label=analysis.label,
            model_version=model_version_key(analysis),
            sr_sop_instance_uid=str(sr.SOPInstanceUID),
            error=None,
            finished_at=utcnow(),
            details=details,
        )
        observe(self.node.metrics, card, status, analysis.label, score, details)
        logger.info(
            "study analysed",
            extra={
                "study_uid": job.study_uid,
                "model": model.name,
                "status": status,
                "score": analysis.score,
                "total_s": timings["total_s"],
            },
        )
        return {"status": status, "score": analysis.score, "sr": str(sr.SOPInstanceUID)}

    def _failed(self, job: Job, task: _Task, started: float) -> dict[str, Any]:
        error = task.error or "failed"
        logger.warning(
            "model failed on the study",
            extra={"study_uid": job.study_uid, "model": task.card.name, "error": error},
        )
        version = task.model.version if task.model is not None else task.card.version
        versions = {task.card.name: version}
        rule = task.card.applicability.body_part
        if rule is not None and rule.model:
            decider = self.models.registry.active_or_none(rule.model)
            if decider is not None:
                versions[rule.model] = decider
        self.results.upsert(
            job.study_uid,
            job.version,
            job.id,
            model_name=task.card.name,
            status="failed",
            score=None,
            label=None,
            model_version=",".join(f"{n}:{v}" for n, v in sorted(versions.items())),
            sr_sop_instance_uid=None,
            error=error[:4000],
            finished_at=utcnow(),
            details={
                "model": task.card.name,
                "timings": {
                    "decode_s": round(task.decode_s, 3),
                    "inference_s": round(task.run.used_s, 3) if task.run is not None else 0.0,
                    "total_s": round(time.perf_counter() - started, 3),
                },
                "series_uid": task.assignment.series_uids[0],
                "attempts": job.attempts,
            },
        )
        observe(self.node.metrics, task.card, "failed", None, None, {})
        self.queue_for_pacs(job.study_uid, None, ResultSummary())
        return {"status": "failed", "error": error, "score": None, "sr": None}
