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
    val_fraction: float,
    test_fraction: float,
    min_labels: int,
    dataset: Output[Dataset],
) -> int:
    """Labelled studies, de-identified, split by patient (ai_node.retrain.export)."""
    from ai_node.retrain.export import run_export

    manifest = run_export(
        api_url, dicomweb_url, dataset.path, val_fraction, test_fraction, min_labels
    )
    dataset.metadata.update(manifest["counts"])
    return int(manifest["labels_upto"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(dataset: Input[Dataset], prepared: Output[Dataset]) -> None:
    """The worker's series choice and decoding (ai_node.retrain.prepare)."""
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
    """Fine-tune the active finding model, or train one from scratch (ai_node.retrain.finetune)."""
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
    report: Output[Artifact],
    report_html: Output[HTML],
    metrics: Output[Metrics],
) -> None:
    """Candidate and active model on the test split (ai_node.retrain.evaluate)."""
    from pathlib import Path

    from ai_node.retrain.evaluate import evaluate_candidate, write_report

    result = evaluate_candidate(Path(prepared.path), Path(model.path), Path(models_dir), threshold)
    write_report(result, Path(report.path), Path(report_html.path))
    for who in ("candidate", "active"):
        for key in ("auc", "sensitivity", "specificity", "brier"):
            if result[who][key] is not None:
                metrics.log_metric(f"{who}_{key}", result[who][key])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_op(
    model: Input[Model],
    report: Input[Artifact],
    models_dir: str,
    auc_margin: float,
    sensitivity_margin: float,
    version: str,
    run_id: str,
) -> str:
    """Register the candidate; activate it if the rule holds (ai_node.retrain.promote)."""
    import json
    from pathlib import Path

    from ai_node.retrain.promote import PromotionRule, promote_candidate

    decision = promote_candidate(
        Path(models_dir),
        Path(model.path),
        json.loads(Path(report.path).read_text()),
        PromotionRule(auc_margin, sensitivity_margin),
        version,
        run_id,
    )
    return json.dumps(decision)
