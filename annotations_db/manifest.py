"""The training-manifest contract between the annotation database (which writes it) and the trainer (which reads it).

One module, imported by both sides (pure Python: no database, no model): the schema name and version, the canonical
split names, the label-of-record rule and the site's held-out split. ``annotations_db.export.export_training`` writes
documents of :data:`VERSION`; ``training.data.read_manifest`` calls :func:`check_document`, which refuses an unknown
schema or a newer version with :class:`ManifestError` (a ``ValueError``) naming both versions.

Document (``manifest.json``)::

    {"schema": "biascare/training-manifest@2", "version": 2, "created_at": ISO 8601 UTC,
     "label_set": [classes...],            # every class an item's labels use, in label-set order
     "label_of_record": "latest-masked-free-or-aided@1",   # RULE_ID: how each item's answer was chosen
     "heldout": {"share": 0.2, "excluded": N},              # the site's held-out split (never in a training export)
     "items": [ITEM, ...]}

Item (also one per line of ``manifest.jsonl``)::

    {"case_id": str, "image": relative path, "mask": relative path | null,
     "clicks": [{"x", "y", "positive", "t"}], "box": [x0, y0, x1, y1] | null,
     "edits": [{"kind": "brush" | "eraser", "points": [[x, y], …], "radius": px}],
     "cleanup": {"min_island_px", "fill_holes"} | null, "slices": {"k": SLICE_EDITS} (volumes only, optional),
     "labels": {class: 0 | 1}, "model_version": str | null,
     "accepted_as_is": bool, "slice_index": int | null, "modality": str | null,
     "split": "train" | "validation" | "test" | null, "source": "free" | "aided",
     "object": {"id": int, "label": str | null, "type": CODE, "modifier": CODE | null}}   # CODE: {value, scheme, meaning}

The mask is what the reader saved: the model's mask from ``box``/``clicks``, then ``edits`` applied in order (brush
sets, eraser clears; original pixel-index coordinates, radius in original px), then ``cleanup`` (islands below
``min_island_px`` display px dropped, holes filled). ``clicks`` and ``box`` are the prompt, ``edits`` manual
corrections: a trainer that simulates clicks must not take a brushed region for the model's answer to the clicks.
A volume's ``slices`` holds the same per slice that has a mask (``{clicks, box, edits, cleanup, carried_from,
accepted}``). These fields came with version 2 and are optional; a reader ignores what it does not use.

Objects: an answer may hold several labelled objects (:mod:`core_model.objects`); the manifest has **one item per
object**, each with that object's own binary ``mask`` (a PNG for 2-D images, a NIfTI for volumes), its edits
(``clicks``/``box``/``edits``/``cleanup``/``slices`` of that object only) and ``object``: its id within the answer (0:
the default, unlabelled object, ``label`` null — every answer saved before objects), its label and the label's codes
(SNOMED CT, or the local ``99BIASCARE`` scheme). Items of one case share ``case_id`` (one patient group). Optional
within version 2: a reader that ignores ``object`` reads each object's mask as one sample.

Next to it the export writes ``labels.csv`` (:data:`LABELS_CSV`): the same items' labels in the CXR-LT
``train_labeled.csv`` layout (``dicom_id`` = case id, ``fpath`` = image, one column per class of ``label_set``, blank =
not assessed; 2-D images only), what the findings classifier trains on (``launch.py train --task seg,cls --cls-csv``).

Version history: 1 — no ``version``/``label_of_record``/``heldout``, ``label_set`` documented but not written, splits
as imported (``training``, ``Train``…), the latest answer of any reader (an unaided read could drop a corrected mask).
2 — this contract. A version-1 document is still read (its splits are normalised here).

Label of record (:data:`RULE`, :func:`label_of_record`): per case, among its submitted answers from free annotation
or from an AI-aided study read (an unaided read measures the reader, it does not correct the model), the latest one
that carries a mask; when none carries a mask, the latest such answer (labels only, ``mask`` null). A case whose
only answers are unaided reads is not exported. Adjudication is not modelled yet: every answer counts alike.

Splits (:func:`normalise_split`): ``train`` (``training``, ``Train`` …), ``validation`` (``val``, ``valid``, ``dev``),
``test`` (``testing``) and ``heldout``; anything else is a :class:`ManifestError`. The trainer trains on ``train`` and
items without a split, validates on ``validation``, and never reads ``heldout``.

Held-out split (:func:`in_heldout`): a case is held out when ``sha256(salt:case_id)`` read as a number in [0, 1) is
below the site's share. The salt and share are the site's (``site_settings``), fixed at the first training job, so
the split never moves: the promotion gate evaluates on it, no training export ever contains it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAME = "biascare/training-manifest"
VERSION = 2
SCHEMA = f"{NAME}@{VERSION}"
RULE_ID = "latest-masked-free-or-aided@1"
RULE = ("per case, the latest submitted answer that carries a mask among its free-annotation and AI-aided answers; "
        "when none carries a mask, the latest such answer (labels only); unaided study reads never count")
SPLITS = ("train", "validation", "test", "heldout")
HELDOUT = "heldout"
SPLIT_ALIASES = {"train": "train", "training": "train", "trn": "train",
                 "validation": "validation", "val": "validation", "valid": "validation", "dev": "validation",
                 "test": "test", "testing": "test", "tst": "test",
                 "heldout": HELDOUT, "held-out": HELDOUT, "held_out": HELDOUT, "holdout": HELDOUT}
SOURCES = ("free", "aided", "unaided")
DEFAULT_HELDOUT_SHARE = 0.2
LABELS_CSV = "labels.csv"
ITEM_KEYS = {"case_id": str, "image": str}


class ManifestError(ValueError):
    """A manifest (or one of its items) that breaks the contract; the message says what and how to fix it."""


# -- version -------------------------------------------------------------------------------------------------------
def parse_schema(schema: Any) -> tuple[str, int]:
    """``"NAME@N"`` → (NAME, N); ManifestError for anything else."""
    if not isinstance(schema, str) or "@" not in schema:
        raise ManifestError(f"manifest schema {schema!r} is not of the form '{NAME}@N'")
    name, _, version = schema.rpartition("@")
    if not version.isdigit():
        raise ManifestError(f"manifest schema {schema!r}: the version after '@' must be an integer")
    return name, int(version)


def check_document(document: Mapping[str, Any]) -> int:
    """The version of a manifest document; ManifestError when its schema is not ours or newer than :data:`VERSION`.

    A document without a ``schema`` key (a bare ``{"items": [...]}``) is read as version 1."""
    if "schema" not in document:
        return 1
    name, version = parse_schema(document["schema"])
    if name != NAME:
        raise ManifestError(f"manifest schema {document['schema']!r} is not a training manifest ({NAME}@N)")
    if version > VERSION:
        raise ManifestError(f"manifest version {version} is newer than this code reads (up to {VERSION}): "
                            "update the training code, or export again with this version of the app")
    if version < 1:
        raise ManifestError(f"manifest version {version} does not exist (versions 1..{VERSION})")
    stated = document.get("version", version)
    if stated != version:
        raise ManifestError(f"manifest says schema version {version} but 'version': {stated!r}")
    if not isinstance(document.get("items"), list):
        raise ManifestError("manifest 'items' must be a list")
    return version


def check_item(item: Any) -> dict[str, Any]:
    """One item with the required keys of their types; ManifestError otherwise (the trainer counts it skipped)."""
    if not isinstance(item, dict):
        raise ManifestError(f"manifest item must be an object, got {type(item).__name__}")
    for key, kind in ITEM_KEYS.items():
        if key == "case_id" and key not in item:
            continue  # hand-written manifests may omit it; the trainer names the item by its position
        if not isinstance(item.get(key), kind):
            raise ManifestError(f"manifest item without {key!r} ({kind.__name__})")
    return item


# -- splits --------------------------------------------------------------------------------------------------------
def normalise_split(split: Any) -> str | None:
    """The canonical split name (:data:`SPLITS`) of ``split``; None for no split; ManifestError for an unknown one."""
    if split is None or (isinstance(split, str) and not split.strip()):
        return None
    canonical = SPLIT_ALIASES.get(str(split).strip().lower())
    if canonical is None:
        raise ManifestError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} (or leave it empty)")
    return canonical


def in_heldout(case_id: str, salt: str, share: float) -> bool:
    """Whether ``case_id`` is in the site's held-out split (see the module docstring)."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


# -- label of record -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What the rule needs of one submitted answer: its id (later = larger), its source and whether it has a mask."""
    id: int
    source: str  # free | aided | unaided
    has_mask: bool


def label_of_record(answers: Sequence[Answer]) -> Answer | None:
    """The answer of record among one case's answers (:data:`RULE`); None when none qualifies."""
    usable = sorted((a for a in answers if a.source in ("free", "aided")), key=lambda a: a.id)
    masked = [a for a in usable if a.has_mask]
    if masked:
        return masked[-1]
    return usable[-1] if usable else None


def header(label_set: Sequence[str], created_at: str, heldout_share: float, excluded: int) -> dict[str, Any]:
    """The document's fields other than ``items``, as :func:`check_document` expects them."""
    return {"schema": SCHEMA, "version": VERSION, "created_at": created_at, "label_set": list(label_set),
            "label_of_record": RULE_ID, "heldout": {"share": heldout_share, "excluded": excluded}}
