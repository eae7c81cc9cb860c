"""CXR-LT 2024 class lists (MICCAI 2024 long-tailed chest X-ray challenge).

Source: the challenge's label definitions, copied from shared/data/cxr_lt_2024/ (classes_task1_40.txt in
``train_labeled.csv`` column order; classes_task2_26_submission_order.txt, the 26 Task-2 gold-standard classes in
submission order, where 'Normal' precedes 'Nodule'). Challenge: https://bionlplab.github.io/2024_MICCAI_CXRLT/ ;
Lin et al., Med Image Anal 2025;106:103739.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CXR_LT_40: tuple[str, ...] = (
    'Adenopathy',
    'Atelectasis',
    'Azygos Lobe',
    'Calcification of the Aorta',
    'Cardiomegaly',
    'Clavicle Fracture',
    'Consolidation',
    'Edema',
    'Emphysema',
    'Enlarged Cardiomediastinum',
    'Fibrosis',
    'Fissure',
    'Fracture',
    'Granuloma',
    'Hernia',
    'Hydropneumothorax',
    'Infarction',
    'Infiltration',
    'Kyphosis',
    'Lobar Atelectasis',
    'Lung Lesion',
    'Lung Opacity',
    'Mass',
    'Nodule',
    'Normal',
    'Pleural Effusion',
    'Pleural Other',
    'Pleural Thickening',
    'Pneumomediastinum',
    'Pneumonia',
    'Pneumoperitoneum',
    'Pneumothorax',
    'Pulmonary Embolism',
    'Pulmonary Hypertension',
    'Rib Fracture',
    'Round(ed) Atelectasis',
    'Subcutaneous Emphysema',
    'Support Devices',
    'Tortuous Aorta',
    'Tuberculosis',
)

CXR_LT_26: tuple[str, ...] = (
    'Atelectasis',
    'Calcification of the Aorta',
    'Cardiomegaly',
    'Consolidation',
    'Edema',
    'Emphysema',
    'Enlarged Cardiomediastinum',
    'Fibrosis',
    'Fracture',
    'Hernia',
    'Infiltration',
    'Lung Lesion',
    'Lung Opacity',
    'Mass',
    'Normal',
    'Nodule',
    'Pleural Effusion',
    'Pleural Other',
    'Pleural Thickening',
    'Pneumomediastinum',
    'Pneumonia',
    'Pneumoperitoneum',
    'Pneumothorax',
    'Subcutaneous Emphysema',
    'Support Devices',
    'Tortuous Aorta',
)

# The structures a CT answer names: the TotalSegmentator v1 labels of ../shared/data/ct_nifti/
# (label_map_totalseg_v1.json) grouped as a reader names them (the five lung lobes -> Lung, the heart chambers and
# myocardium -> Heart, 24 vertebrae -> Vertebra, 24 ribs -> Rib, other bones, muscles), plus a lesion entry for what
# is not a normal structure.
CT_STRUCTURES: tuple[str, ...] = (
    'Lung', 'Trachea', 'Heart', 'Pulmonary artery', 'Aorta', 'Inferior vena cava', 'Portal/splenic vein',
    'Iliac vessels', 'Esophagus', 'Stomach', 'Duodenum', 'Small bowel', 'Colon', 'Liver', 'Gallbladder', 'Spleen',
    'Pancreas', 'Kidney', 'Adrenal gland', 'Urinary bladder', 'Vertebra', 'Rib', 'Other bone', 'Muscle', 'Brain',
    'Lesion',
)

# TotalSegmentator v1 label name (prefix) -> its CT_STRUCTURES group; the first matching prefix wins
_CT_GROUP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lung_", "Lung"), ("trachea", "Trachea"), ("heart_", "Heart"), ("pulmonary_artery", "Pulmonary artery"),
    ("aorta", "Aorta"), ("inferior_vena_cava", "Inferior vena cava"), ("portal_vein", "Portal/splenic vein"),
    ("iliac_", "Iliac vessels"), ("esophagus", "Esophagus"), ("stomach", "Stomach"), ("duodenum", "Duodenum"),
    ("small_bowel", "Small bowel"), ("colon", "Colon"), ("liver", "Liver"), ("gallbladder", "Gallbladder"),
    ("spleen", "Spleen"), ("pancreas", "Pancreas"), ("kidney_", "Kidney"), ("adrenal_gland", "Adrenal gland"),
    ("urinary_bladder", "Urinary bladder"), ("vertebrae_", "Vertebra"), ("rib_", "Rib"),
    ("humerus", "Other bone"), ("scapula", "Other bone"), ("clavicula", "Other bone"), ("femur", "Other bone"),
    ("hip_", "Other bone"), ("sacrum", "Other bone"), ("gluteus_", "Muscle"), ("autochthon", "Muscle"),
    ("iliopsoas", "Muscle"), ("brain", "Brain"),
)


def ct_structure_group(totalsegmentator_name: str) -> str | None:
    """The :data:`CT_STRUCTURES` group of a TotalSegmentator v1 label ("kidney_left" -> "Kidney"); None for a label
    that belongs to no group ("face")."""
    for prefix, group in _CT_GROUP_PREFIXES:
        if totalsegmentator_name.startswith(prefix):
            return group
    return None


LABEL_SETS: dict[str, tuple[str, ...]] = {"cxr-lt-26": CXR_LT_26, "cxr-lt-40": CXR_LT_40,
                                          "ct-structures": CT_STRUCTURES}


def label_set(name: str) -> tuple[str, ...]:
    """The class tuple for ``'cxr-lt-26'`` or ``'cxr-lt-40'``; KeyError names the known sets otherwise."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {sorted(LABEL_SETS)}") from None

@dataclass(frozen=True)
class LabelSet:
    """A task's label set: its classes and the answer rules that go with them.

    ``exclusive``: a class that cannot be positive together with any other ('Normal' in the CXR-LT sets) — one rule,
    checked by :meth:`check` wherever an answer is taken or saved.
    """
    name: str
    classes: tuple[str, ...]
    exclusive: str | None = None

    def check(self, positives: Iterable[str]) -> None:
        """ValueError when ``positives`` names an unknown class or breaks the exclusive class's rule."""
        chosen = set(positives)
        unknown = sorted(chosen - set(self.classes))
        if unknown:
            raise ValueError(f"unknown class(es) {unknown}; the label set {self.name!r} has {len(self.classes)}")
        if self.exclusive in chosen and len(chosen) > 1:
            others = ", ".join(sorted(chosen - {self.exclusive}))
            raise ValueError(f"'{self.exclusive}' cannot be chosen together with findings ({others})")


def label_rules(name: str, classes: Iterable[str]) -> LabelSet:
    """The answer rules of a class list: 'Normal', where the list has it, excludes every finding."""
    classes = tuple(classes)
    return LabelSet(name, classes, "Normal" if "Normal" in classes else None)


def label_set_spec(name: str) -> LabelSet:
    """The :class:`LabelSet` of ``'cxr-lt-26'`` or ``'cxr-lt-40'`` (KeyError names the known sets otherwise)."""
    return label_rules(name, label_set(name))


# Positive counts per class in CXR-LT 2024 train_labeled.csv (258,871 images): the long-tail prior used by
# logit-adjusted losses and shown in the model card.
TRAIN_IMAGES = 258_871
TRAIN_POSITIVE_COUNTS: dict[str, int] = {
    'Adenopathy': 3409,
    'Atelectasis': 65376,
    'Azygos Lobe': 199,
    'Calcification of the Aorta': 4239,
    'Cardiomegaly': 74738,
    'Clavicle Fracture': 168,
    'Consolidation': 15371,
    'Edema': 37256,
    'Emphysema': 3661,
    'Enlarged Cardiomediastinum': 29628,
    'Fibrosis': 1169,
    'Fissure': 2803,
    'Fracture': 11568,
    'Granuloma': 2965,
    'Hernia': 3986,
    'Hydropneumothorax': 646,
    'Infarction': 727,
    'Infiltration': 10087,
    'Kyphosis': 778,
    'Lobar Atelectasis': 129,
    'Lung Lesion': 2338,
    'Lung Opacity': 77482,
    'Mass': 5288,
    'Nodule': 7531,
    'Normal': 34292,
    'Pleural Effusion': 66401,
    'Pleural Other': 616,
    'Pleural Thickening': 3272,
    'Pneumomediastinum': 704,
    'Pneumonia': 46660,
    'Pneumoperitoneum': 516,
    'Pneumothorax': 13858,
    'Pulmonary Embolism': 1631,
    'Pulmonary Hypertension': 903,
    'Rib Fracture': 8919,
    'Round(ed) Atelectasis': 172,
    'Subcutaneous Emphysema': 2046,
    'Support Devices': 86079,
    'Tortuous Aorta': 3336,
    'Tuberculosis': 2078,
}

# NIH ChestX-ray14 label → CXR-LT 2024 class (as ../shared/data/nih_cxr14_sample/label_mapping_nih14_to_cxrlt2024.json):
# an NIH row assesses exactly these 15 CXR-LT classes; the others are not assessed.
NIH14_TO_CXRLT: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Effusion": "Pleural Effusion", "Emphysema": "Emphysema", "Fibrosis": "Fibrosis",
    "Hernia": "Hernia", "Infiltration": "Infiltration", "Mass": "Mass", "Nodule": "Nodule",
    "Pleural_Thickening": "Pleural Thickening", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "No Finding": "Normal",
}


@dataclass(frozen=True)
class Checklist:
    """The finding checklist a case screen shows: a label set (its classes and answer rules), a title, and the
    modalities it is for. Chest radiographs get the 26 CXR-LT classes, CT/MR volumes the CT structure set."""

    label_set: LabelSet
    title: str
    volumes: bool  # for CT/MR volumes (True) or 2-D radiographs (False)

    @property
    def name(self) -> str:
        return self.label_set.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_set.classes


CXR_CHECKLIST = Checklist(label_rules("cxr-lt-26", CXR_LT_26), "Findings (CXR-LT 2024, 26 classes)", volumes=False)
CT_CHECKLIST = Checklist(label_rules("ct-structures", CT_STRUCTURES),
                         "Structures shown (TotalSegmentator groups)", volumes=True)


def checklist_for(is_volume: bool) -> Checklist:
    """The checklist of a case: CT/MR volumes the structure set, 2-D images (chest radiographs) CXR-LT 26."""
    return CT_CHECKLIST if is_volume else CXR_CHECKLIST
