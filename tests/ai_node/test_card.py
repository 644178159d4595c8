"""The model card (model.yaml): validation naming the field, codes resolved, docs current."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydicom.sr.codedict import codes

from ai_node.card import (
    REFERENCE_DOC,
    SCHEMA_DOC,
    CardError,
    parse_card,
    read_card,
    reference_doc,
    schema_text,
)

SHIPPED = Path(__file__).resolve().parents[2] / "ai_node" / "models"


def finding_card() -> dict:
    return yaml.safe_load((SHIPPED / "finding" / "1.0.0" / "model.yaml").read_text())


def test_the_generated_schema_and_reference_are_current() -> None:
    assert SCHEMA_DOC.read_text() == schema_text(), "run: python -m ai_node.card docs"
    current = REFERENCE_DOC.read_text()
    assert reference_doc(current) == current, "run: python -m ai_node.card docs"


def test_shipped_cards_are_valid_and_resolve_their_codes() -> None:
    finding = read_card(SHIPPED / "finding" / "1.0.0" / "model.yaml")
    region = read_card(SHIPPED / "region" / "1.0.0" / "model.yaml")
    assert finding.finding_code() == codes.SCT.Lesion
    assert finding.finding_site_code() == codes.SCT.Lung
    assert finding.label_vocabulary == ("no lesion", "lesion")
    assert finding.label_for(0.5, 0.5) == "lesion" and finding.label_for(0.49, 0.5) == "no lesion"
    assert finding.operating_threshold is None  # the node's finding_threshold decides
    assert finding.applicability.body_part is not None
    assert finding.applicability.body_part.model == "region"
    assert not region.reports and region.label_code("head") == codes.SCT.Head
    assert finding.output_widths() == (1, 2) and region.output_widths() == (3,)


def _broken(change) -> str:
    data = finding_card()
    change(data)
    with pytest.raises(CardError) as info:
        parse_card(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d.pop("sha256"), "sha256: Field required"),
        (lambda d: d.update(task="regression"), "task:"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (lambda d: d["sr"].update(finding="SCT.LungNodule"), "sr.finding:"),
        (lambda d: d["sr"].update(finding="LN.XRUnspecifiedBodyRegion"), "sr.finding:"),
        (lambda d: d["outputs"].update(positive_label="nodule"), "outputs.positive_label:"),
        (lambda d: d["outputs"].update(labels=["a", "b", "c"]), "outputs.labels:"),
        (lambda d: d["input"].update(size=[128, 64]), "square"),
        (lambda d: d["input"].update(channels=2), "input.channels:"),
        (lambda d: d.pop("aggregation"), "aggregation:"),
        (lambda d: d["applicability"].update(modalities=["CT", "CR"]), "hu_window"),
        (lambda d: d["applicability"].update(sop_classes=["NoSuchStorage"]), "sop_classes.0:"),
        (lambda d: d["applicability"].update(series_description="(unclosed"), "regular"),
        (lambda d: d["applicability"]["body_part"].pop("model"), "body_part:"),
        (lambda d: d.update(name="Finding Model"), "name:"),
        (lambda d: d.update(timeout_s=0), "timeout_s:"),
    ],
)
def test_bad_cards_are_refused_naming_the_field(change, names) -> None:
    assert names in _broken(change)


def test_an_xray_card_with_imagenet_and_no_aggregation() -> None:
    data = finding_card()
    data.update(name="cxr", task="binary")
    data.pop("aggregation")
    data["applicability"] = {
        "modalities": ["CR", "DX"],
        "sop_classes": [
            "ComputedRadiographyImageStorage",
            "DigitalXRayImageStorageForPresentation",
        ],
        "body_part": {"any_of": ["CHEST"], "source": "tag"},
    }
    data["input"] = {
        "kind": "image",
        "size": [224, 224],
        "channels": 3,
        "normalisation": {
            "scale": "percentile",
            "percentiles": [0.5, 99.5],
            "standardise": "imagenet",
        },
    }
    data["sr"] = {"finding": "DCM.AbnormalOpacity", "finding_site": "SCT.Lung"}
    card = parse_card(copy.deepcopy(data))
    assert card.procedure_code() == codes.LN.XRUnspecifiedBodyRegion
    assert card.applicability.sop_classes[0] == "1.2.840.10008.5.1.4.1.1.1"
    data["input"]["channels"] = 1
    with pytest.raises(CardError, match="imagenet needs channels: 3"):
        parse_card(data)


def test_not_a_mapping_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="mapping"):
        parse_card(["a"])
    (tmp_path / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(CardError, match="not YAML"):
        read_card(tmp_path / "model.yaml")
    with pytest.raises(CardError, match="no card"):
        read_card(tmp_path / "missing" / "model.yaml")
