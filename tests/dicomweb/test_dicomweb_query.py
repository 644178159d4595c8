"""QIDO-RS parameter parsing and the SQL it builds, in-process (dicomweb.query)."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from dicomweb.query import QueryError, build_select, parse


def sql(level: str, params: list[tuple[str, str]], is_sqlite: bool = True) -> str:
    stmt = build_select(parse(level, params), is_sqlite)  # type: ignore[arg-type]
    dialect = sqlite.dialect() if is_sqlite else postgresql.dialect()
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def test_keywords_and_tags() -> None:
    query = parse(
        "study", [("00100020", "P1"), ("PatientName", ""), ("includefield", "00081030,all")]
    )
    assert [(a.keyword, v) for a, v in query.filters] == [("PatientID", "P1")]
    assert query.include == {"PatientName", "StudyDescription"}
    assert query.include_all


def test_levels() -> None:
    # A series attribute at study level is not matched: returned and warned about.
    query = parse("study", [("Modality", "CT")])
    assert query.filters == [] and query.unsupported == ["Modality"]
    # Study attributes match at series and instance level.
    assert "patient_id" in sql("instance", [("PatientID", "P1")])


@pytest.mark.parametrize(
    "params",
    [
        [("limit", "-1")],
        [("StudyDate", "2024010")],
        [("StudyTime", "25:00")],
        [("SeriesNumber", "one")],
        [("Nope", "1")],
        [("PatientName", "a\x00b")],
        [("PatientName", "x" * 2000)],
    ],
)
def test_malformed(params: list[tuple[str, str]]) -> None:
    with pytest.raises(QueryError):
        parse("series", params)


def test_wildcards_per_dialect() -> None:
    lite = sql("study", [("PatientName", "doe*"), ("AccessionNumber", "A[1]?")])
    assert "lower(studies.patient_name) GLOB 'doe*'" in lite
    assert "studies.accession_number GLOB 'A[[]1[]]?'" in lite
    pg = sql("study", [("PatientName", "do_e*"), ("AccessionNumber", "A%?")], is_sqlite=False)
    assert "GLOB" not in pg and pg.count("ESCAPE") == 2
    assert "lower(studies.patient_name) LIKE 'do\\_e%" in pg  # _ escaped, * became %
    assert "studies.accession_number LIKE 'A\\%" in pg  # % escaped


def test_ranges_and_lists() -> None:
    text = sql("study", [("StudyDate", "20240101-"), ("StudyTime", "-12")])
    assert "studies.study_date >= '20240101'" in text
    assert "studies.study_time <= '12~'" in text
    text = sql("series", [("SeriesInstanceUID", "1.2\\1.3,1.4")])
    assert text.count("series.series_uid =") == 3
    text = sql("study", [("ModalitiesInStudy", "CT\\MR")])
    assert "EXISTS" in text and "series.modality = 'MR'" in text


def test_request_attributes_sequence() -> None:
    for name in (
        "RequestAttributesSequence.ScheduledProcedureStepID",
        "00400275.00400009",
    ):
        query = parse("series", [(name, "SPS1")])
        assert [a.keyword for a, _ in query.filters] == [
            "RequestAttributesSequence.ScheduledProcedureStepID"
        ]
    assert "series.requested_procedure_id" in sql(
        "instance", [("RequestAttributesSequence.RequestedProcedureID", "RP*")]
    )
    with pytest.raises(QueryError):
        parse("series", [("RequestAttributesSequence.AccessionNumber", "1")])
