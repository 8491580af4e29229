"""The Modality Worklist: open consultations as scheduled procedure steps (plain Python, no I/O).

A scanner asks with a C-FIND identifier: the keys it wants returned, some with values to match.
Each open consultation is one item: its accession number, the pseudonymous patient reference as
PatientID, a pseudonymous PatientName, modality US, the requested procedure from the application.
Matching (PS3.4 C.2.2.2) is supported on AccessionNumber, PatientID, PatientName,
RequestedProcedureID (single values, `*` and `?` wildcards), the step's Modality and its start
date (a date or a range); other keys are returned but not matched on. The answer holds exactly
the keys asked for, empty where the item has no value.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

STEP = "ScheduledProcedureStepSequence"
# Keys matched on, at the top level and in the scheduled procedure step.
TOP_MATCHED = ("AccessionNumber", "PatientID", "PatientName", "RequestedProcedureID")


@dataclass(frozen=True)
class Item:
    """One open consultation, as the worklist shows it."""

    accession_number: str
    patient_id: str
    patient_name: str
    study_uid: str
    requested_at: datetime
    procedure: str  # e.g. "US breast second opinion"


def _values(item: Item) -> tuple[Dataset, Dataset]:
    top = Dataset()
    top.AccessionNumber = item.accession_number
    top.PatientName = item.patient_name
    top.PatientID = item.patient_id
    top.PatientBirthDate = ""
    top.PatientSex = ""
    top.StudyInstanceUID = item.study_uid
    top.RequestedProcedureID = item.accession_number
    top.RequestedProcedureDescription = item.procedure[:64]
    top.ReferringPhysicianName = ""
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = item.requested_at.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = item.requested_at.strftime("%H%M%S")
    step.ScheduledProcedureStepDescription = item.procedure[:64]
    step.ScheduledProcedureStepID = item.accession_number
    step.ScheduledPerformingPhysicianName = ""
    return top, step


def _wildcard(wanted: object, value: str) -> bool:
    pattern = str(wanted or "")
    if pattern in ("", "*"):
        return True
    # fnmatch's [] classes are not DICOM wildcards: escape them.
    pattern = pattern.replace("[", "[[]")
    return fnmatch.fnmatchcase(value.rstrip("^ "), pattern.rstrip("^ "))


def _date_matches(wanted: object, value: str) -> bool:
    text = str(wanted or "").strip()
    if not text:
        return True
    if "-" in text:
        low, _, high = text.partition("-")
        return (not low or value >= low) and (not high or value <= high)
    return value == text


def matches(query: Dataset, item: Item) -> bool:
    top, step = _values(item)
    for keyword in TOP_MATCHED:
        if keyword in query and not _wildcard(query.get(keyword), str(top.get(keyword))):
            return False
    for wanted in query.get(STEP, None) or []:
        modality = str(wanted.get("Modality", "") or "")
        if modality and modality != "US":
            return False
        start = wanted.get("ScheduledProcedureStepStartDate", "")
        if not _date_matches(start, step.ScheduledProcedureStepStartDate):
            return False
    return True


def answer(query: Dataset, item: Item) -> Dataset:
    """The identifier returned for `item`: the keys `query` asked for, filled in."""
    top, step = _values(item)
    out = Dataset()
    for element in query:
        keyword = element.keyword
        if keyword == STEP:
            asked = element.value[0] if element.value else Dataset()
            filled = Dataset()
            for key in asked:
                if key.keyword in step:
                    filled[key.tag] = step[key.tag]
                else:
                    filled.add_new(key.tag, key.VR, None)
            out.ScheduledProcedureStepSequence = Sequence([filled])
        elif keyword == "SpecificCharacterSet":
            continue
        elif keyword in top:
            out[element.tag] = top[element.tag]
        else:
            out.add_new(element.tag, element.VR, None)
    return out


def search(query: Dataset, items: list[Item]) -> list[Dataset]:
    """The answers to a worklist query, in the items' order."""
    return [answer(query, item) for item in items if matches(query, item)]
