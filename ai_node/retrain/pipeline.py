"""The retraining pipeline: the five steps wired in one place (kfp v2 ``@dsl.pipeline``).

    export -> preprocess -> train -> evaluate -> promote

``model`` names the model retrained (a registry name whose active card says ``trainable:
true``). Only the export step takes it: it asks the API for that model's labels and card
and records both in the data set's manifest, from which the later steps read it.

The defaults are the in-cluster ones (k8s/base: the radnode-api Service, the shared
volume mounted at /data); ``radnode retrain`` passes the node's settings instead.
Caching is off: every run must read the labels and the registry as they are now.
``compile_pipeline`` writes the YAML checked in as k8s/pipelines/retrain-pipeline.yaml.

In a Kubeflow cluster (the KFP profile namespace must be ``radnode``, where the Secret
and the volume are; docs/retraining.md) the Kubernetes platform config (kfp-kubernetes)
gives each step what it needs, and nothing more:

* export: the Secret :data:`RETRAINING_SECRET` as ``RADNODE_RETRAINING_SALT`` and
  ``RADNODE_RETRAINING_API_TOKEN`` (never pipeline parameters, which KFP shows), and the
  pod label :data:`EXPORT_POD_LABEL` that the NetworkPolicy ``radnode-api-http`` lets
  into the API;
* train, evaluate, promote: the shared volume :data:`DATA_PVC` at :data:`DATA_MOUNT`,
  where ``models_dir`` (the registry, ``/data/models``) is.

``kfp.local`` ignores the platform config: ``radnode retrain`` passes the secrets in its
environment and the registry path of this machine.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from ai_node.retrain.components import (
    evaluate_op,
    export_op,
    preprocess_op,
    promote_op,
    train_op,
)
from ai_node.retrain.export import SALT_ENV, TOKEN_ENV

PIPELINE_NAME = "radnode-retrain"

RETRAINING_SECRET = "radnode-retraining"
"""The Secret (namespace radnode) the admin creates; k8s/README.md."""
SECRET_ENV = {"salt": SALT_ENV, "api-token": TOKEN_ENV}
"""Its keys, and the environment variables the export step reads them from."""
DATA_PVC = "radnode-data"
"""The shared volume of every radnode pod (k8s/base/pvc.yaml)."""
DATA_MOUNT = "/data"
"""Where it is mounted (``RADNODE_DATA_DIR``; the registry is ``/data/models``)."""
EXPORT_POD_LABEL = ("app.kubernetes.io/component", "retrain-export")
"""The export pod's label, allowed into the API by k8s/base/networkpolicies.yaml."""


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="radnode: radiologist labels -> de-identified dataset -> train -> "
    "evaluate -> promote a trainable model (default: the finding model)",
)
def retrain_pipeline(
    api_url: str = "http://radnode-api.radnode.svc.cluster.local:8080",
    dicomweb_url: str = "",
    model: str = "finding",
    models_dir: str = "/data/models",
    epochs: int = 3,
    from_scratch: bool = False,
    seed: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.3,
    min_labels: int = 8,
    min_test_positives: int = 10,
    min_test_negatives: int = 10,
    threshold: float = 0.5,
    prevalence: float = 0.1,
    bootstrap_samples: int = 1000,
    sensitivity_margin: float = 0.0,
    specificity_margin: float = 0.05,
    brier_margin: float = 0.01,
    auc_margin: float = 0.05,
    version: str = "",
    run_id: str = "",
) -> str:
    export = export_op(
        api_url=api_url,
        dicomweb_url=dicomweb_url,
        model=model,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_labels=min_labels,
        min_test_positives=min_test_positives,
        min_test_negatives=min_test_negatives,
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
        prevalence=prevalence,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )
    promote = promote_op(
        model=train.outputs["model"],
        report=evaluate.outputs["report"],
        models_dir=models_dir,
        sensitivity_margin=sensitivity_margin,
        specificity_margin=specificity_margin,
        brier_margin=brier_margin,
        auc_margin=auc_margin,
        version=version,
        run_id=run_id,
    )
    for task in (export, prepared, train, evaluate, promote):
        task.set_caching_options(False)
    kubernetes.use_secret_as_env(export, RETRAINING_SECRET, SECRET_ENV)
    kubernetes.add_pod_label(export, *EXPORT_POD_LABEL)
    for task in (train, evaluate, promote):
        kubernetes.mount_pvc(task, DATA_PVC, DATA_MOUNT)
    return promote.outputs["Output"]


def compile_pipeline(path: Path) -> Path:
    """Write the pipeline's IR YAML (KFP v2) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(retrain_pipeline, str(path))
    return path
