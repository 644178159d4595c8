"""The two edges share one store: C-STORE then QIDO-RS, STOW-RS then the DIMSE side's index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread

from radnode_core.index import Index
from radnode_core.jobs import JobQueue
from tests.support.dicomweb_studies import VariedStudies, dicomweb_url
from tests.support.radnode_process import RadnodeProcess
from tests.support.tools import storescu


@pytest.fixture
def scp_and_api(tmp_path: Path) -> Iterator[tuple[RadnodeProcess, RadnodeProcess]]:
    data = tmp_path / "data"
    scp = RadnodeProcess(data, "scp").start()
    api = RadnodeProcess(data, "api").start()
    yield scp, api
    api.stop()
    scp.stop()


def test_cstore_then_qido_and_stow_then_index(
    scp_and_api: tuple[RadnodeProcess, RadnodeProcess],
    chest_study: tuple[object, list[Path]],
    varied_studies: VariedStudies,
) -> None:
    scp, api = scp_and_api
    files = sorted(chest_study[1])[:4]
    result = storescu(scp.dicom_port, files)
    assert result.returncode == 0, result.stderr
    first = dcmread(files[0], stop_before_pixels=True)

    client = DICOMwebClient(dicomweb_url(api))
    found = client.search_for_studies(search_filters={"StudyInstanceUID": first.StudyInstanceUID})
    assert len(found) == 1
    assert found[0]["00201208"]["Value"] == [4]
    retrieved = client.retrieve_instance(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert retrieved.PixelData == dcmread(files[0]).PixelData

    study = varied_studies.of_study(2)
    client.store_instances(study)
    index = Index(f"sqlite:///{(scp.data_dir / 'index.sqlite3').resolve()}")
    try:
        for ds in study:
            row = index.find_instance(ds.SOPInstanceUID)
            assert row is not None and row["study_uid"] == ds.StudyInstanceUID
        jobs = JobQueue(index).jobs_for(study[0].StudyInstanceUID)
        assert [(j["reason"], j["version"]) for j in jobs] == [("stow", len(study))]
    finally:
        index.close()
    # STOWing the same instances again stores nothing new and queues no new job.
    again = client.store_instances(study)
    assert len(again.ReferencedSOPSequence) == len(study)
    index = Index(f"sqlite:///{(scp.data_dir / 'index.sqlite3').resolve()}")
    try:
        assert len(JobQueue(index).jobs_for(study[0].StudyInstanceUID)) == 1
    finally:
        index.close()
