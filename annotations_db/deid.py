"""De-identification of DICOM headers: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Options (:class:`DeidOptions`): the Clean Descriptors Option (default on) and the Retain Longitudinal Temporal
Information with Modified Dates Option (off by default: dates and times are removed or blanked as the profile's action
codes say; on: every date is shifted by one whole number of days per export, so intervals are kept).

Where the action codes come from: Table E.1-1 as shipped by the PyPI package ``dicom-anonymizer`` (Kitware, BSD-3),
whose ``dicom_anonymization_databases/dicomfields_<edition>.py`` files are generated from the standard's HTML by its
maintainers' scraper (newest edition installed is used; 2026c at the time of writing). Only the table is used, not
that package's engine: its UID map is one module-level dict (shared by every export of a process, where each export
here needs its own), its per-tag actions are not applied inside sequences, and it writes dummy dates instead of
removing them. The other candidates were weighed and not taken: ``dicognito`` (replaces names, institutions and
dates with plausible fakes rather than following the action codes, has no option for removing dates or cleaning
descriptors), ``deid`` (its default recipe is a hand-written list, e.g. ``REMOVE endswith:Date``, not Table E.1-1),
``idiscore`` (has every option column but is GPL-3, needs Python >= 3.12 from 1.3 on and pins Pillow < 11 before),
and pydicom (no de-identification helper beyond ``remove_private_tags``).

How the codes are applied (:class:`Deidentifier`), walking every element, sequences included:

* X remove, Z zero length, D a dummy of the VR, U a new UID, K keep, C (Clean Descriptors: the profile's
  ``…Description`` / ``…Comment(s)`` text attributes; the option's own column is not in the shipped table) keep the
  text with every identifying value of the same dataset (names, IDs, institution, station…) and every run of 4+ digits
  cut out. Compound codes (X/Z, X/D, X/Z/D, Z/D) keep the attribute at the top level (Z, or D when no Z is offered)
  where an IOD may need it, and remove it inside sequence items; X/Z/U* sequences are kept with their UIDs replaced.
* Stricter than the table: every private element is removed; every UID that is not a well-known registry UID (SOP
  classes, transfer syntaxes, coding schemes) is replaced even where the table does not list it (references…);
  InstanceCreatorUID (U in the table) is removed; every DA/DT/TM element is removed (or shifted) even where the
  table does not list it.
* UIDs: one :class:`UidMap` per export run: the same source UID always gets the same new UID within it (so a
  DICOM-SEG's references and its de-identified image copy agree), another export gets other UIDs. A UID the map
  issued itself is left as it is (de-identifying an already de-identified dataset changes no reference).
* Dates with the Modified Dates option: DA and the date part of DT shifted by ``date_shift_days``, TM kept (a whole
  number of days), DT's UTC offset dropped; the patient's birth date and time are still blanked.
* Then PatientName / PatientID = the case's pseudonymous id, PatientIdentityRemoved = YES,
  LongitudinalTemporalInformationModified = MODIFIED or REMOVED, DeidentificationMethod and
  DeidentificationMethodCodeSequence (CID 7050: 113100, plus 113105 / 113107 for the options used).
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

CATEGORY_CODES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
                  "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
DATE_VRS = ("DA", "DT", "TM")
TEXT_VRS = ("LO", "SH", "ST", "LT", "UT", "UC")
DESCRIPTOR = re.compile(r"(Description|Comments?)$")
BIRTH = ("PatientBirthDate", "PatientBirthTime")
# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1), present in every composite
# image IOD: kept (zero length) when the profile blanks them or the source lacks them (highdicom requires them)
PATIENT_STUDY_TYPE2 = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                       "AccessionNumber")
# stricter than the table: the creator of the source instance (U there, a Type 3 attribute) is removed, not remapped
STRICTER = {0x00080014: "X"}  # InstanceCreatorUID
PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")


@dataclass(frozen=True)
class DeidOptions:
    """The profile's options used: Clean Descriptors, and Modified Dates (``date_shift_days``: None = dates removed or
    blanked; an int = every date shifted by that many days)."""
    clean_descriptors: bool = True
    date_shift_days: int | None = None

    @classmethod
    def random_date_shift(cls, clean_descriptors: bool = True, low: int = 365, high: int = 3650) -> DeidOptions:
        """Modified Dates with a secret random offset of ``-high..-low`` days (draw one per export)."""
        return cls(clean_descriptors, -(low + secrets.randbelow(high - low + 1)))


@lru_cache(maxsize=1)
def annex_e_table() -> tuple[str, dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """(edition, {tag: action code}, repeating-group rules (group, element, group mask, element mask, code)) of the
    newest Table E.1-1 edition that ``dicom-anonymizer`` ships."""
    from dicomanonymizer import dicom_anonymization_databases as databases
    edition = max(m.name for m in pkgutil.iter_modules(databases.__path__) if m.name.startswith("dicomfields_"))
    module = importlib.import_module(f"{databases.__name__}.{edition}")
    single: dict[int, str] = {}
    repeating: list[tuple[int, int, int, int, str]] = []
    for category, code in CATEGORY_CODES.items():
        for tag in getattr(module, category):
            if len(tag) == 2:
                single[(tag[0] << 16) | tag[1]] = code
            else:
                repeating.append((*tag, code))
    return edition.removeprefix("dicomfields_"), single, tuple(repeating)


def action_code(tag: int) -> str | None:
    """Table E.1-1's Basic Profile action code of ``tag`` (None: not listed)."""
    _, single, repeating = annex_e_table()
    if tag in STRICTER:
        return STRICTER[tag]
    if tag in single:
        return single[tag]
    group, element = tag >> 16, tag & 0xFFFF
    return next((code for g, e, gm, em, code in repeating if group & gm == g & gm and element & em == e & em), None)


@dataclass
class UidMap:
    """One export's UID replacement: the same source UID always maps to the same new UID."""
    mapping: dict[str, str] = field(default_factory=dict)

    def __call__(self, uid: str) -> str:
        """The new UID of ``uid`` (an issued UID maps to itself; well-known registry UIDs are never passed here)."""
        from pydicom.uid import generate_uid
        uid = str(uid)
        if uid in self._issued:
            return uid
        if uid not in self.mapping:
            self.mapping[uid] = generate_uid()
            self._issued.add(self.mapping[uid])
        return self.mapping[uid]

    def __post_init__(self) -> None:
        self._issued: set[str] = set(self.mapping.values())


def is_registry_uid(uid: str) -> bool:
    """A well-known UID of the DICOM registry (SOP class, transfer syntax, coding scheme…), never an instance's."""
    from pydicom.uid import UID_dictionary
    return str(uid) in UID_dictionary


class Deidentifier:
    """De-identifies pydicom Datasets for one export run (one UID map, one date offset); see the module docstring."""

    def __init__(self, options: DeidOptions | None = None) -> None:
        self.options = options or DeidOptions()
        self.uids = UidMap()

    def apply(self, dataset: Any, pseudo_id: str) -> Any:
        """A de-identified copy of ``dataset`` whose patient is ``pseudo_id``; file meta rebuilt, nothing kept from the
        source's (its implementation / sending AE)."""
        clean = copy.deepcopy(dataset)
        meta = getattr(clean, "file_meta", None)
        self._walk(clean, _identifying_values(clean), top=True)
        self.mark(clean, pseudo_id)
        if meta is not None:
            clean.file_meta = self._file_meta(meta, clean)
        return clean

    def new_uid(self, uid: str) -> str:
        """The export's replacement of ``uid`` (registry UIDs unchanged)."""
        return uid if is_registry_uid(uid) else self.uids(uid)

    def _walk(self, dataset: Any, identifying: list[str], top: bool) -> None:
        for element in list(dataset):
            if element.tag.is_private:
                del dataset[element.tag]
            elif element.VR == "SQ":
                self._sequence(dataset, element, identifying, top)
            else:
                self._element(dataset, element, identifying, top)

    def _sequence(self, dataset: Any, element: Any, identifying: list[str], top: bool) -> None:
        code = _resolve(action_code(int(element.tag)), top)
        if code in ("X", "D"):
            del dataset[element.tag]
        elif code == "Z":
            element.value = []
        else:
            for item in element.value:
                self._walk(item, identifying, top=False)

    def _element(self, dataset: Any, element: Any, identifying: list[str], top: bool) -> None:
        code = _resolve(action_code(int(element.tag)), top)
        if element.VR in DATE_VRS:
            self._date(dataset, element, code)
        elif element.VR == "UI":
            self._uid(dataset, element, code)
        elif code == "C" or (code and self.options.clean_descriptors and _is_descriptor(element)):
            element.value = _cleaned(element.value, identifying)
        elif code == "X":
            del dataset[element.tag]
        elif code == "Z":
            element.value = None
        elif code == "D":
            element.value = _dummy(element.VR)

    def _date(self, dataset: Any, element: Any, code: str | None) -> None:
        """Shifted (Modified Dates, birth date/time excepted), else removed; blanked where the code keeps it."""
        shift = self.options.date_shift_days
        if shift is not None and element.keyword not in BIRTH and element.value:
            element.value = _shift(element.value, element.VR, shift)
        elif code in ("Z", "D"):
            element.value = None
        else:
            del dataset[element.tag]

    def _uid(self, dataset: Any, element: Any, code: str | None) -> None:
        if code == "X":
            del dataset[element.tag]
        elif code == "Z":
            element.value = None
        elif element.value:
            values = element.value if element.VM > 1 else [element.value]
            new = [self.new_uid(v) for v in values]
            element.value = new if element.VM > 1 else new[0]

    def mark(self, dataset: Any, pseudo_id: str) -> None:
        """Patient = the pseudonymous id; the profile and options used recorded as PS3.15 E.1.1 asks."""
        from pydicom.dataset import Dataset
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in dataset:
                setattr(dataset, keyword, None)
        dataset.PatientName = f"{pseudo_id}^"
        dataset.PatientID = pseudo_id
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = \
            "REMOVED" if self.options.date_shift_days is None else "MODIFIED"
        used = self.method_codes()
        edition = annex_e_table()[0]
        dataset.DeidentificationMethod = [f"PS3.15 Annex E Basic Profile (Table E.1-1 {edition})"] + \
                                         [meaning for _, meaning in used[1:]]
        items = []
        for value, meaning in used:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        dataset.DeidentificationMethodCodeSequence = items

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (value, meaning) of the profile and the options this run uses."""
        return [PROFILE] + ([CLEAN_DESCRIPTORS] if self.options.clean_descriptors else []) + \
            ([MODIFIED_DATES] if self.options.date_shift_days is not None else [])

    def _file_meta(self, meta: Any, dataset: Any) -> Any:
        """New file meta: SOP class / instance of the de-identified dataset and the source transfer syntax; pydicom
        fills in its own implementation UID and version when saving."""
        from pydicom.dataset import FileMetaDataset
        fresh = FileMetaDataset()
        fresh.MediaStorageSOPClassUID = dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        fresh.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID") or \
            self.new_uid(meta.get("MediaStorageSOPInstanceUID"))
        if "TransferSyntaxUID" in meta:
            fresh.TransferSyntaxUID = meta.TransferSyntaxUID
        return fresh


def _resolve(code: str | None, top: bool) -> str | None:
    """A compound code's choice: at the top level Z (else D) where an IOD may need the attribute, removal inside
    sequence items; X/Z/U* keeps the sequence (its UIDs are replaced)."""
    if code is None or "/" not in code:
        return code
    if code == "X/Z/U*":
        return "U"
    if not top and code.startswith("X"):
        return "X"
    return "Z" if "Z" in code else "D"


def _is_descriptor(element: Any) -> bool:
    return element.VR in TEXT_VRS and DESCRIPTOR.search(element.keyword or "") is not None


def _identifying_values(dataset: Any) -> list[str]:
    """Every text / name value (descriptors aside) the profile removes or replaces anywhere in ``dataset`` (longest
    first), for cleaning descriptors; name components too."""
    found: set[str] = set()

    def visit(ds: Any, element: Any) -> None:
        code = action_code(int(element.tag))
        if element.VR in TEXT_VRS + ("PN", "CS", "AE") and code not in (None, "K", "C") and element.value \
                and not _is_descriptor(element):
            values = element.value if element.VM > 1 else [element.value]
            for value in map(str, values):
                found.update(part.strip() for part in re.split(r"[\^=]", value) if len(part.strip()) >= 3)
    dataset.walk(visit)
    return sorted(found, key=len, reverse=True)


def _cleaned(value: Any, identifying: list[str]) -> Any:
    """``value`` with every identifying value and every run of 4+ digits cut out (multi-valued: each value)."""
    if value is None:
        return value
    if not isinstance(value, str):
        return [_cleaned(v, identifying) for v in value]
    for text in identifying:
        value = re.sub(re.escape(text), "", value, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", re.sub(r"\d{4,}", "", value)).strip()


def _dummy(vr: str) -> Any:
    """A dummy value consistent with ``vr`` (PS3.15 action D)."""
    if vr in ("IS", "DS"):
        return "0"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV") or vr.startswith(("US", "SS")):
        return 0
    if vr == "AS":
        return "000Y"
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    if vr == "UR":
        return None
    return "ANONYMIZED"


def _shift(value: Any, vr: str, days: int) -> Any:
    """DA / DT values shifted by ``days`` (DT's UTC offset dropped); TM unchanged (whole days)."""
    if vr == "TM":
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_shift(v, vr, days) for v in value]
    value = str(value)  # pydicom's DA / DT objects print their original string
    match = re.match(r"(\d{4})\.?(\d{2})\.?(\d{2})([\d.]*)", value.strip())
    if match is None:
        return None  # not a date: nothing of it is kept
    moved = datetime(*map(int, match.groups()[:3])) + timedelta(days=days)
    return moved.strftime("%Y%m%d") + (match.group(4) if vr == "DT" else "")
