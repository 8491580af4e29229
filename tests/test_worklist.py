"""The worklist's matching and answers, and the DICOM node's settings, without a network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from server.config import load_settings
from server.dicom import worklist
from server.errors import ConfigError

ITEMS = [
    worklist.Item(
        "K7Q2M9XD",
        "BR-0042",
        "PL-AAAA^",
        "2.25.1",
        datetime(2026, 12, 1, 9, tzinfo=UTC),
        "US breast second opinion",
    ),
    worklist.Item(
        "Z3N8P4RT",
        "DV-7",
        "PL-BBBB^",
        "2.25.2",
        datetime(2026, 12, 3, 14, tzinfo=UTC),
        "US venous (DVT) second opinion",
    ),
]


def query(**keys: object) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = keys.pop("AccessionNumber", "")
    ds.PatientID = keys.pop("PatientID", "")
    ds.PatientName = keys.pop("PatientName", "")
    step = Dataset()
    step.Modality = keys.pop("Modality", "")
    step.ScheduledProcedureStepStartDate = keys.pop("Date", "")
    step.ScheduledStationAETitle = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    assert not keys
    return ds


def accessions(q: Dataset) -> list[str]:
    return [a.AccessionNumber for a in worklist.search(q, ITEMS)]


def test_matching_on_the_keys_a_scanner_uses() -> None:
    assert accessions(query()) == ["K7Q2M9XD", "Z3N8P4RT"]
    assert accessions(query(AccessionNumber="Z3N8P4RT")) == ["Z3N8P4RT"]
    assert accessions(query(PatientID="BR-*")) == ["K7Q2M9XD"]
    assert accessions(query(PatientName="PL-BB*")) == ["Z3N8P4RT"]
    assert accessions(query(Modality="US")) == ["K7Q2M9XD", "Z3N8P4RT"]
    assert accessions(query(Modality="CT")) == []
    assert accessions(query(Date="20261203")) == ["Z3N8P4RT"]
    assert accessions(query(Date="20261201-20261202")) == ["K7Q2M9XD"]
    assert accessions(query(Date="-20261130")) == []
    assert accessions(query(PatientID="[BD]*")) == []  # brackets are not DICOM wildcards


def test_the_answer_holds_exactly_the_keys_asked_for() -> None:
    q = query(AccessionNumber="K7Q2M9XD")
    q.InstitutionName = ""  # a key the worklist has no value for: returned empty
    [answer] = worklist.search(q, ITEMS)
    assert {e.keyword for e in answer} == {e.keyword for e in q}
    assert answer.PatientID == "BR-0042" and answer.InstitutionName in (None, "")
    [step] = answer.ScheduledProcedureStepSequence
    assert step.Modality == "US" and step.ScheduledProcedureStepStartDate == "20261201"
    assert {e.keyword for e in step} == {
        "Modality",
        "ScheduledProcedureStepStartDate",
        "ScheduledStationAETitle",
    }


@pytest.mark.parametrize(
    ("peers", "said"),
    [
        ("SCANNER", "entry 1 must be AE_TITLE@host"),
        ("SCANNER@10.0.0.5, @10.0.0.6", "entry 2"),
        ("A_TITLE_LONGER_THAN_16@10.0.0.5", "entry 1"),
        ("BAD\\AE@10.0.0.5", "entry 1"),
    ],
)
def test_bad_peer_lists_stop_start_up_naming_the_entry(
    tmp_path: Path, peers: str, said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        load_settings(data_dir=tmp_path, dicom_port=11112, dicom_peers=peers)


def test_a_dicom_port_without_peers_or_with_a_bad_title_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DICOM_PEERS names no scanner"):
        load_settings(data_dir=tmp_path, dicom_port=11112)
    with pytest.raises(ConfigError, match="1-16 printable"):
        load_settings(data_dir=tmp_path, dicom_ae_title="")
    settings = load_settings(
        data_dir=tmp_path, dicom_port=11112, dicom_peers="US1@10.0.0.5, US2@scanner.local"
    )
    assert settings.dicom_peer_list == (("US1", "10.0.0.5"), ("US2", "scanner.local"))
