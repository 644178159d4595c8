"""The retraining pipeline: the five steps wired in one place (kfp v2 ``@dsl.pipeline``).

    export -> preprocess -> train -> evaluate -> promote

The defaults are the in-cluster ones (k8s/base: the radnode-api Service, the shared
volume mounted at /data); ``radnode retrain`` passes the node's settings instead.
Caching is off: every run must read the labels and the registry as they are now.
``compile_pipeline`` writes the YAML checked in as k8s/pipelines/retrain-pipeline.yaml.
"""

from pathlib import Path

from kfp import compiler, dsl

from ai_node.retrain.components import (
    evaluate_op,
    export_op,
    preprocess_op,
    promote_op,
    train_op,
)

PIPELINE_NAME = "radnode-retrain"
STEPS = ("export", "preprocess", "train", "evaluate", "promote")
"""Step names as kfp names the tasks (``<name>-op``), in order."""


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="radnode: radiologist labels -> de-identified dataset -> train -> "
    "evaluate -> promote the finding model",
)
def retrain_pipeline(
    api_url: str = "http://radnode-api.radnode.svc.cluster.local:8080",
    dicomweb_url: str = "",
    models_dir: str = "/data/models",
    epochs: int = 3,
    from_scratch: bool = False,
    seed: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.3,
    min_labels: int = 8,
    threshold: float = 0.5,
    auc_margin: float = 0.02,
    sensitivity_margin: float = 0.0,
    version: str = "",
    run_id: str = "",
) -> str:
    export = export_op(
        api_url=api_url,
        dicomweb_url=dicomweb_url,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_labels=min_labels,
    )
    prepared = preprocess_op(dataset=export.outputs["dataset"])
    train = train_op(
        prepared=prepared.outputs["prepared"],
        models_dir=models_dir,
        epochs=epochs,
        from_scratch=from_scratch,
        seed=seed,
    )
    evaluate = evaluate_op(
        prepared=prepared.outputs["prepared"],
        model=train.outputs["model"],
        models_dir=models_dir,
        threshold=threshold,
    )
    promote = promote_op(
        model=train.outputs["model"],
        report=evaluate.outputs["report"],
        models_dir=models_dir,
        auc_margin=auc_margin,
        sensitivity_margin=sensitivity_margin,
        version=version,
        run_id=run_id,
    )
    for task in (export, prepared, train, evaluate, promote):
        task.set_caching_options(False)
    return promote.output


def compile_pipeline(path: Path) -> Path:
    """Write the pipeline's IR YAML (KFP v2) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(retrain_pipeline, str(path))
    return path
