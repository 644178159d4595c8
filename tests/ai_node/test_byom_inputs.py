"""A card's input and applicability without a model: radiographs decoded as one-image
slices (MONOCHROME1/2, 10 to 16 bits), each normalisation, and the routing rules."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ai_node.card import IMAGENET_MEAN, IMAGENET_STD, parse_card
from ai_node.preprocess import card_input, load_series, model_input
from ai_node.routing import route
from tests.support.model_packages import ct_card, cxr_card, radiograph


def _card(card: dict, **changes):
    data = {**card, **changes, "sha256": "0" * 64}
    return parse_card(data)


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_monochrome1_and_2_radiographs_give_the_same_input(tmp_path, bits) -> None:
    uid = pydicom.uid.generate_uid()
    m2 = radiograph(tmp_path / "m2", study_uid=uid, bits=bits, photometric="MONOCHROME2")
    m1 = radiograph(tmp_path / "m1", study_uid=uid, bits=bits, photometric="MONOCHROME1")
    card = _card(cxr_card())
    stacks = [load_series([p], size=224) for p in (m2, m1)]
    flags = stacks[1].monochrome1
    assert stacks[0].monochrome1 is None and flags is not None and flags.tolist() == [True]
    x2, x1 = (card_input(s.hu, card.input, s.monochrome1) for s in stacks)
    assert x1.shape == (1, 224, 224, 3)
    # inverted back, MONOCHROME1 matches MONOCHROME2 up to the integer rounding of storage
    assert np.abs(x1 - x2).max() < 0.1
    assert np.allclose(x1.mean(axis=(0, 1, 2)), x2.mean(axis=(0, 1, 2)), atol=0.02)


def test_each_normalisation(tmp_path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1000, (3, 32, 32)).astype(np.float32)
    base = ct_card()
    lung = _card(base, input={**base["input"], "size": [32, 32]})
    assert np.allclose(
        card_input(hu, lung.input), np.clip((hu + 1350) / 1500, 0, 1)[..., None], atol=1e-6
    )
    shipped_like = _card(
        base,
        input={
            **base["input"],
            "size": [32, 32],
            "normalisation": {
                "scale": "hu_window",
                "windows": [{"center": -600, "width": 1500}],
                "standardise": "per_image",
            },
        },
    )
    assert np.array_equal(card_input(hu, shipped_like.input), model_input(hu, "lung"))
    three = _card(
        base,
        input={
            "kind": "slice",
            "size": [32, 32],
            "channels": 3,
            "normalisation": {
                "scale": "hu_window",
                "windows": [
                    {"center": -600, "width": 1500},
                    {"center": 40, "width": 400},
                    {"center": 400, "width": 1800},
                ],
            },
        },
    )
    x = card_input(hu, three.input)
    assert x.shape == (3, 32, 32, 3)
    assert np.allclose(x[..., 1], np.clip((hu + 160) / 400, 0, 1))
    xr = cxr_card()
    minmax = _card(xr, input={**xr["input"], "normalisation": {"scale": "min_max"}, "channels": 1})
    y = card_input(hu, minmax.input)
    assert y.min() == 0.0 and y.max() == 1.0 and y.shape == (3, 32, 32, 1)
    imagenet = _card(xr)
    z = card_input(hu, imagenet.input)
    low, high = np.percentile(hu.reshape(3, -1), [0.5, 99.5], axis=1)
    unit = np.clip((hu - low[:, None, None]) / (high - low)[:, None, None], 0, 1)
    expected = (unit[..., None] - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    assert np.allclose(z, expected, atol=1e-5)


def _rows(series: str, sop_class: str, n: int) -> list[dict]:
    return [
        {
            "series_uid": series,
            "sop_class_uid": sop_class,
            "path": f"{series}/{i}",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        }
        for i in range(n)
    ]


def test_routing_rules(tmp_path) -> None:
    headers = {}

    def header(series: str, **attrs) -> None:
        ds = pydicom.Dataset()
        for k, v in attrs.items():
            setattr(ds, k, v)
        headers[series] = ds

    header("ct", Modality="CT", SeriesDescription="CHEST 1mm", BodyPartExamined="CHEST")
    header("loc", Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    header("cr", Modality="CR", BodyPartExamined="CHEST")
    ct, cr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.1"
    instances = _rows("ct", ct, 40) + _rows("loc", ct, 1) + _rows("cr", cr, 2)
    open_header = lambda path: headers[path.split("/")[0]]  # noqa: E731
    cards = [
        _card(ct_card()),
        _card(
            ct_card(name="thin"),
            applicability={**ct_card()["applicability"], "series_description": "1 ?mm"},
        ),
        _card(
            ct_card(name="short"),
            applicability={**ct_card()["applicability"], "slices": {"min": 1, "max": 20}},
        ),
        _card(cxr_card()),
        _card(
            cxr_card(name="lateral"),
            applicability={**cxr_card()["applicability"], "series_description": "LAT"},
        ),
    ]
    routed = route(cards, instances, open_header)
    got = {a.name: (a.series_uids, a.frames) for a in routed.assignments}
    assert got == {"proto-ct": (("ct",), 40), "thin": (("ct",), 40), "cxr-densenet": (("cr",), 2)}
    assert "40 slice(s), the model takes 1..20" in routed.not_for["short"]
    assert "series description" in routed.not_for["lateral"]
