"""With duplicate_policy=replace, a re-sent instance's new header is what WADO and QIDO show."""

from __future__ import annotations

import copy
from pathlib import Path

from dicomweb_client import DICOMwebClient

from tests.support.dicomweb_studies import VariedStudies, dicomweb_url
from tests.support.radnode_process import RadnodeProcess


def test_replaced_instance_is_read_again(
    tmp_path: Path,
    varied_studies: VariedStudies,
) -> None:
    node = RadnodeProcess(
        tmp_path / "data", "api", env={"RADNODE_DUPLICATE_POLICY": "replace"}
    ).start()
    try:
        client = DICOMwebClient(dicomweb_url(node))
        first = copy.deepcopy(varied_studies.of_study(5)[0])
        uids = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID)
        first.ImageComments = "first version"
        client.store_instances([first])
        assert client.retrieve_instance_metadata(*uids)["00204000"]["Value"] == ["first version"]
        found = client.search_for_instances(
            search_filters={"SOPInstanceUID": uids[2], "includefield": "ImageComments"}
        )
        assert found[0]["00204000"]["Value"] == ["first version"]

        second = copy.deepcopy(first)
        second.ImageComments = "other version"
        client.store_instances([second])
        assert client.retrieve_instance_metadata(*uids)["00204000"]["Value"] == [
            "other version"
        ]
        found = client.search_for_instances(
            search_filters={"SOPInstanceUID": uids[2], "includefield": "ImageComments"}
        )
        assert found[0]["00204000"]["Value"] == ["other version"]
    finally:
        node.stop()
