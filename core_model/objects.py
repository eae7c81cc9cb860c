"""The labelled objects an answer may hold: label sets of objects, each label coded and coloured.

An answer holds one or more *objects*, each a mask with a label (a lung, the heart, a finding's extent, a CT
structure). The reader picks a label, then draws that object's mask; the exports carry each object with its label and
its code (DICOM-SEG segments, the NIfTI label table, COCO categories, one training-manifest entry per object).

Codes: SNOMED CT concepts as pydicom's code dictionary has them (``pydicom.sr.codedict.codes.SCT``, the DICOM PS3.16
tables), looked up here by keyword so that a code is never typed in by hand. Where SNOMED CT has a concept but
pydicom's dictionary does not (Atelectasis, Consolidation, Support Devices …), or the label is a grouping with no one
concept (Iliac vessels), the code is of the **local** coding scheme :data:`LOCAL_SCHEME` (``99BIASCARE``: DICOM's
private coding scheme designators start with 99), its value ``BC-…``; it says what the label means here and nothing
more. Laterality is a modifier, as DICOM-SEG codes it (SegmentedPropertyTypeModifierCodeSequence): the right lung is
*Lung* modified by *Right*.

Object 0 of an answer is the *default object*: the one mask every answer had before objects (on a chest radiograph the
AI's lung proposal), unlabelled, exported as before (segment "annotation", a lesion). Labelled objects have ids ≥ 1.

Label sets: chest radiographs get :data:`CXR_OBJECTS` (right lung, left lung, heart / cardiomediastinum, and the CXR-LT
26 findings but 'Normal'), CT/MR volumes :data:`CT_OBJECTS` (the CT structure checklist, TotalSegmentator groups).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core_model.classes import CT_STRUCTURES, CXR_LT_26

LOCAL_SCHEME = "99BIASCARE"
DEFAULT_OBJECT = 0
DEFAULT_LABEL = "annotation"  # what the default object is called in exports (as before objects)
DEFAULT_COLOUR = (0, 216, 255)  # the viewer's mask colour of the default object (cyan)
PALETTE: tuple[tuple[int, int, int], ...] = (  # labelled objects, in label-set order (cycled)
    (255, 196, 0), (255, 64, 129), (124, 255, 79), (186, 104, 255), (255, 120, 40), (0, 255, 180),
    (255, 235, 59), (64, 160, 255), (255, 82, 82), (160, 255, 200), (240, 98, 146), (200, 180, 255),
)


@dataclass(frozen=True)
class Code:
    """A coded concept: value, coding scheme designator and meaning (DICOM's Code Sequence attributes)."""
    value: str
    scheme: str
    meaning: str

    @property
    def local(self) -> bool:
        """True for the local coding scheme (no standard concept in pydicom's dictionary)."""
        return self.scheme == LOCAL_SCHEME

    def as_dict(self) -> dict[str, str]:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    def pydicom(self) -> Any:
        """The same as a ``pydicom.sr.coding.Code`` (what highdicom takes)."""
        from pydicom.sr.coding import Code as PydicomCode
        return PydicomCode(self.value, self.scheme, self.meaning)


def sct(keyword: str) -> Code:
    """The SNOMED CT concept of pydicom's code dictionary named ``keyword`` (AttributeError when it has none)."""
    from pydicom.sr.codedict import codes
    concept = getattr(codes.SCT, keyword)
    return Code(str(concept.value), str(concept.scheme_designator), str(concept.meaning))


LOCAL_VALUE_MAX = 16  # a DICOM Code Value is an SH: at most 16 characters


def local(name: str) -> Code:
    """A concept of the local coding scheme for ``name``: value ``BC-`` + the name in capitals, cut to the 16
    characters of a DICOM Code Value (the label sets check that no two labels share a value)."""
    value = ("BC-" + "-".join("".join(ch if ch.isalnum() else " " for ch in name.upper()).split()))
    return Code(value[:LOCAL_VALUE_MAX].rstrip("-"), LOCAL_SCHEME, name)


ANATOMY = sct("AnatomicalStructure")
ABNORMAL = sct("MorphologicallyAbnormalStructure")
PHYSICAL_OBJECT = sct("PhysicalObject")


@dataclass(frozen=True)
class ObjectLabel:
    """One label an object may carry: its name (what the reader picks and the exports write), the DICOM-SEG
    segmented property category and type (and laterality modifier), and the colour the viewer draws it in."""
    name: str
    category: Code
    type: Code
    colour: tuple[int, int, int]
    modifier: Code | None = None

    def as_dict(self) -> dict[str, Any]:
        """The label as the page and the exports' label tables write it."""
        return {"label": self.name, "category": self.category.as_dict(), "type": self.type.as_dict(),
                "modifier": None if self.modifier is None else self.modifier.as_dict(),
                "colour": list(self.colour)}


DEFAULT_OBJECT_LABEL = ObjectLabel(DEFAULT_LABEL, ABNORMAL, sct("Lesion"), DEFAULT_COLOUR)


@dataclass(frozen=True)
class ObjectLabelSet:
    """The labels of the objects of one kind of case (chest radiographs, CT/MR volumes)."""
    name: str
    labels: tuple[ObjectLabel, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def get(self, name: str) -> ObjectLabel:
        """The label called ``name``; ValueError naming the set and its labels otherwise."""
        for label in self.labels:
            if label.name == name:
                return label
        raise ValueError(f"unknown object label {name!r}; the label set {self.name!r} has: {', '.join(self.names)}")

    def spec(self, name: str | None) -> ObjectLabel:
        """The label of an object: ``None`` is the default object's."""
        return DEFAULT_OBJECT_LABEL if name is None else self.get(name)

    def as_list(self) -> list[dict[str, Any]]:
        return [label.as_dict() for label in self.labels]

    def __post_init__(self) -> None:
        names = [label.name for label in self.labels]
        local_values = [label.type.value for label in self.labels if label.type.local]
        if len(set(names)) != len(names) or len(set(local_values)) != len(local_values):
            raise ValueError(f"object label set {self.name!r}: two labels share a name or a local code")


def _labels(entries: list[tuple[str, Code, Code, Code | None]]) -> tuple[ObjectLabel, ...]:
    return tuple(ObjectLabel(name, category, kind, PALETTE[i % len(PALETTE)], modifier)
                 for i, (name, category, kind, modifier) in enumerate(entries))


# the CXR-LT 26 findings (but 'Normal', which is no object) with pydicom's SNOMED CT concept where it has one
_FINDING_CODES = {"Cardiomegaly": "Cardiomegaly", "Edema": "PulmonaryEdema", "Fibrosis": "Fibrosis", "Mass": "Mass",
                  "Nodule": "Nodule", "Pleural Effusion": "PleuralEffusion",
                  "Pneumomediastinum": "Pneumomediastinum", "Pneumothorax": "Pneumothorax"}


def _finding(name: str) -> tuple[str, Code, Code, None]:
    if name == "Support Devices":
        return name, PHYSICAL_OBJECT, local(name), None
    keyword = _FINDING_CODES.get(name)
    return name, ABNORMAL, sct(keyword) if keyword else local(name), None


CXR_OBJECTS = ObjectLabelSet("cxr-objects", _labels(
    [("Right lung", ANATOMY, sct("Lung"), sct("Right")), ("Left lung", ANATOMY, sct("Lung"), sct("Left")),
     ("Heart / cardiomediastinum", ANATOMY, sct("Heart"), None)]
    + [_finding(name) for name in CXR_LT_26 if name != "Normal"]))

# the CT structure checklist (core_model.classes.CT_STRUCTURES) with pydicom's SNOMED CT concepts
_STRUCTURE_CODES = {
    "Lung": "Lung", "Trachea": "Trachea", "Heart": "Heart", "Pulmonary artery": "PulmonaryArtery", "Aorta": "Aorta",
    "Inferior vena cava": "InferiorVenaCava", "Esophagus": "Esophagus", "Stomach": "Stomach",
    "Duodenum": "Duodenum", "Small bowel": "SmallIntestine", "Colon": "Colon", "Liver": "Liver",
    "Gallbladder": "Gallbladder", "Spleen": "Spleen", "Pancreas": "Pancreas", "Kidney": "Kidney",
    "Adrenal gland": "AdrenalGland", "Urinary bladder": "Bladder", "Vertebra": "Vertebra", "Rib": "Rib",
    "Other bone": "Bone", "Muscle": "Muscle", "Brain": "Brain", "Lesion": "Lesion",
}


def _structure(name: str) -> tuple[str, Code, Code, None]:
    keyword = _STRUCTURE_CODES.get(name)
    category = ABNORMAL if name == "Lesion" else ANATOMY
    return name, category, sct(keyword) if keyword else local(name), None  # groups (Iliac vessels …): local


CT_OBJECTS = ObjectLabelSet("ct-structures", _labels([_structure(name) for name in CT_STRUCTURES]))

OBJECT_SETS: dict[str, ObjectLabelSet] = {s.name: s for s in (CXR_OBJECTS, CT_OBJECTS)}


def object_set_for(is_volume: bool) -> ObjectLabelSet:
    """The object labels of a case: CT/MR volumes the CT structures, 2-D images (chest radiographs) the CXR set."""
    return CT_OBJECTS if is_volume else CXR_OBJECTS


def object_set_for_checklist(checklist_name: str, is_volume: bool) -> ObjectLabelSet:
    """The object labels of a read on a study's checklist: a study on the CT structures takes the CT objects, one on
    a CXR-LT set the chest radiograph objects; any other checklist the case's default (:func:`object_set_for`)."""
    if checklist_name == "ct-structures":
        return CT_OBJECTS
    if checklist_name.startswith("cxr-lt"):
        return CXR_OBJECTS
    return object_set_for(is_volume)


def slug(name: str) -> str:
    """A file-name part for a label: ``Heart / cardiomediastinum`` → ``heart-cardiomediastinum``."""
    parts = "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()
    return "-".join(parts) or "object"
