"""The kfp v2 components: thin wrappers over the plain step functions.

Each component imports its step inside the function body (kfp ships the body's source to
the task) and only translates artifacts to paths. They run in the radnode image
(:data:`IMAGE`, the tag k8s/base deploys), which already holds kfp and radnode, so no
package is installed at run time (``install_kfp_package=False``). Locally,
``kfp.local.SubprocessRunner(use_venv=False)`` runs the same bodies with this Python.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

IMAGE = "radnode:0.1.0"
"""The radnode image, tag pinned as in k8s/base/kustomization.yaml (images: newTag)."""


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_op(
    api_url: str,
    dicomweb_url: str,
    model: str,
    val_fraction: float,
    test_fraction: float,
    min_labels: int,
    min_test_positives: int,
    min_test_negatives: int,
    dataset: Output[Dataset],
) -> int:
    """The studies labelled for ``model``, de-identified, split by patient and label
    (ai_node.retrain.export); fails when the test split would hold too few of either class."""
    from ai_node.retrain.export import run_export

    manifest = run_export(
        api_url,
        dicomweb_url,
        dataset.path,
        val_fraction,
        test_fraction,
        min_labels,
        min_test_negatives,
        min_test_positives,
        model,
    )
    dataset.metadata.update(manifest["counts"])
    return int(manifest["labels_upto"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(dataset: Input[Dataset], prepared: Output[Dataset]) -> None:
    """The worker's routing and decoding for the model's card (ai_node.retrain.prepare)."""
    from pathlib import Path

    from ai_node.retrain.prepare import preprocess_dataset

    manifest = preprocess_dataset(Path(dataset.path), Path(prepared.path))
    prepared.metadata["studies"] = len(manifest["studies"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(
    prepared: Input[Dataset],
    models_dir: str,
    epochs: int,
    from_scratch: bool,
    seed: int,
    model: Output[Model],
) -> None:
    """Fine-tune the active version of the model the data set is for, or train one from
    scratch (ai_node.retrain.finetune)."""
    from pathlib import Path

    from ai_node.retrain.finetune import train_candidate

    info = train_candidate(
        Path(prepared.path), Path(models_dir), Path(model.path), epochs, from_scratch, seed
    )
    model.metadata.update({k: v for k, v in info.items() if v is not None})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    prepared: Input[Dataset],
    model: Input[Model],
    models_dir: str,
    threshold: float,
    prevalence: float,
    bootstrap_samples: int,
    seed: int,
    report: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Candidate and active model on the test split, with bootstrap intervals
    (ai_node.retrain.evaluate)."""
    from pathlib import Path

    from ai_node.retrain.evaluate import evaluate_candidate, write_report

    result = evaluate_candidate(
        Path(prepared.path),
        Path(model.path),
        Path(models_dir),
        threshold,
        prevalence,
        bootstrap_samples,
        seed,
    )
    write_report(result, Path(report.path))
    for who in ("candidate", "active"):
        for key in ("auc", "sensitivity", "specificity", "brier", "ece", "threshold"):
            if result[who][key] is not None:
                metrics.log_metric(f"{who}_{key}", result[who][key])
    metrics.log_metric("auc_difference", result["auc_difference"]["estimate"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_op(
    model: Input[Model],
    report: Input[Artifact],
    models_dir: str,
    sensitivity_margin: float,
    specificity_margin: float,
    brier_margin: float,
    auc_margin: float,
    version: str,
    run_id: str,
    report_html: Output[HTML],
) -> str:
    """Register the candidate; activate it if the rule holds (ai_node.retrain.promote); the
    report as HTML with the decision (ai_node.retrain.report)."""
    import json
    from pathlib import Path

    from ai_node.retrain.promote import PromotionRule, promote_candidate
    from ai_node.retrain.report import render_report

    evaluation = json.loads(Path(report.path).read_text())
    decision = promote_candidate(
        Path(models_dir),
        Path(model.path),
        evaluation,
        PromotionRule(sensitivity_margin, specificity_margin, brier_margin, auc_margin),
        version,
        run_id,
    )
    Path(report_html.path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_html.path).write_text(render_report(evaluation, decision))
    return json.dumps(decision)
