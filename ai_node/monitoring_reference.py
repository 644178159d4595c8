"""The ``monitoring.inputs`` of a shipped model's card, measured on its held-out data.

``python -m ai_node.monitoring_reference finding|chest-xray-opacity`` regenerates the
held-out studies (or radiographs) of the model from their seeds, measures each one's input
statistics exactly as the pipeline does (:func:`ai_node.monitoring.input_statistics`) and
prints the card section: one quantile histogram per statistic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import yaml
from pydicom.dataset import Dataset

from ai_node import train, xray_train
from ai_node.card import INPUT_STATISTICS_NAMES
from ai_node.monitoring import input_statistics, reference_distribution
from ai_node.preprocess import load_datasets
from ai_node.synth import generate_study
from ai_node.xray_synth import generate_radiograph

MODELS = ("finding", "chest-xray-opacity")


def heldout_series(model: str, limit: int | None = None) -> Iterator[list[Dataset]]:
    """The held-out series the model reports on: the chest CTs of the finding model's
    held-out plan, or the chest X-ray model's held-out radiographs (one per series)."""
    if model == "finding":
        specs = train.synthetic_specs(train.HELDOUT_PLAN, train.HELDOUT_SEED_BASE)
        for spec in [s for s in specs if s.region == "chest"][:limit]:
            yield list(generate_study(spec)[1])
    elif model == "chest-xray-opacity":
        for xspec in xray_train.plan_specs(xray_train.HELDOUT_PLAN)[:limit]:
            yield [generate_radiograph(xspec)[1]]
    else:
        raise ValueError(f"no held-out data known for {model!r}: one of {', '.join(MODELS)}")


def measure(datasets: list[Dataset], size: int) -> dict[str, float | str]:
    """One series' input statistics as the pipeline records them."""
    stack = load_datasets(datasets, size)
    stack.headers = {str(ds.SOPInstanceUID): ds for ds in datasets}
    return input_statistics(stack, str(datasets[0].get("Modality", "")) or None)


def reference(model: str, limit: int | None = None) -> dict[str, dict[str, list[float]]]:
    """The card's ``monitoring.inputs`` for ``model`` from its held-out data."""
    size = 128 if model == "finding" else 224
    values: dict[str, list[float]] = {name: [] for name in INPUT_STATISTICS_NAMES}
    for datasets in heldout_series(model, limit):
        stats = measure(datasets, size)
        for name in INPUT_STATISTICS_NAMES:
            value = stats.get(name)
            if isinstance(value, float):
                values[name].append(value)
    return {name: reference_distribution(v).model_dump() for name, v in values.items() if v}


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ai_node.monitoring_reference")
    parser.add_argument("model", choices=MODELS)
    ns = parser.parse_args(args)
    sys.stdout.write(
        yaml.safe_dump({"inputs": reference(ns.model)}, sort_keys=False, default_flow_style=None)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
