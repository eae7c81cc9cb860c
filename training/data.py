"""Training data: every source becomes a list of :class:`SegSample` (lazy image + mask loaders) or :class:`ClsSample`.

Sources
    * ``folder_samples(root)``: ``root/images/*`` with ``root/masks/<stem><mask_suffix>`` (default ``_lung.png``);
      an optional ``root/metadata.csv`` (column ``patientid`` or ``--group-column``) gives the patient of each image,
      used for splitting by patient.
    * ``manifest_samples(path)``: the training manifest exported by ``annotations_db`` (JSON list, ``{"items": [...]}``
      or JSON Lines), items ``{image, mask, clicks:[{x,y,positive,t}], labels:{class: 0/1}, model_version, case_id,
      split}``; relative paths are relative to the manifest's folder. Read as a file, never the live database; its
      version, item fields and split names follow the contract of :mod:`annotations_db.manifest` (the one module
      both sides import: pure Python, no database).
    * ``structure_samples(root)``: a ``prepare-ct-structures`` folder's *train* structures on its *train* slices, one
      sample per slice whose mask is the slice's label image (``SegSample.structures``: label value → name); the
      held-out structures and slices of its ``split.json`` are never read.
    * ``nifti_samples(volume, mask)``: 2-D slices (default axial, radiological display, lung window) where the mask is
      present (at least ``min_pixels``).
    * ``cxrlt_samples(csv, image_root)``: the CXR-LT 2024 ``train_labeled.csv`` layout; a blank cell = not assessed →
      masked out of the loss (label -1 here).

Bad input never gives a silent wrong result: every skipped item is counted by reason in a :class:`SkipLog` (logged,
written to the run's metrics JSON); ``strict=True`` turns the first one into a :class:`DataError`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger("training.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp")
DEFAULT_MASK_SUFFIX = "_lung.png"


class DataError(ValueError):
    """Unusable training input (names the file and the cause)."""


@dataclass
class SkipLog:
    """Counts of skipped items by reason, with a few examples each; ``strict`` raises instead of skipping."""

    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, item: str, detail: str = "") -> None:
        message = f"{item}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DataError(message)
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(message)
        log.warning("skipped %s", message)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}

    def merge(self, other: "SkipLog") -> None:
        self.counts.update(other.counts)
        for key, values in other.examples.items():
            self.examples.setdefault(key, []).extend(values[: 5 - len(self.examples.get(key, []))])


@dataclass
class SegSample:
    """One 2-D image with a binary mask. ``load()`` → (pixels float32 (H, W) in [0, 1], mask bool (H, W)); with
    ``structures`` the mask is an integer label image (H, W) holding those label values (0 = none)."""

    key: str
    group: str
    source: str
    loader: Callable[[], tuple[np.ndarray, np.ndarray]]
    clicks: list[dict] = field(default_factory=list)  # recorded clicks (original pixel-index coords), if any
    labels: dict[str, int] = field(default_factory=dict)
    split: str | None = None
    structures: dict[int, str] = field(default_factory=dict)  # non-empty: the mask is a label image and these of
    # its values (value → name) are the targets; its other labels are no target (held out, or too small there)
    unlabelled: bool = False  # no mask at all: targets only from the data engine (training.data_engine)
    object_label: str | None = None  # the mask is one labelled object of an answer (a manifest's "object" label)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return self.loader()


@dataclass
class ClsSample:
    """One image with multi-label targets: ``labels`` maps class → 1 / 0 / -1 (-1 = not assessed, masked)."""

    key: str
    group: str
    path: Path
    labels: dict[str, int]


# ----------------------------------------------------------------------------- loading helpers
def load_pixels(path: Path) -> np.ndarray:
    """Any 2-D image file → float32 (H, W) in [0, 1] (``core_model.io.load_image``)."""
    from core_model.io import load_image

    return np.ascontiguousarray(load_image(path).pixels, dtype=np.float32)


def load_binary_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Mask file → bool (H, W); raises ``core_model.errors.MaskShapeError`` when its size differs from ``shape``."""
    from core_model.io import load_mask

    mask = load_mask(path)
    if mask.ndim == 3:  # an RGB(A) mask saved by some tool: any channel > 0
        mask = mask.any(axis=-1)
    if tuple(mask.shape) != tuple(shape):
        from core_model.errors import MaskShapeError

        raise MaskShapeError(path, f"mask shape {tuple(mask.shape)} does not match image shape {tuple(shape)}")
    return mask.astype(bool)


def _image_mask_loader(image_path: Path, mask_path: Path) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        pixels = load_pixels(image_path)
        return pixels, load_binary_mask(mask_path, pixels.shape)

    return load


def check_sample(sample: SegSample, skips: SkipLog, min_pixels: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """Load a sample; on a bad image / mask / empty mask count the skip and return None."""
    from core_model.errors import ImageReadError, MaskShapeError

    try:
        pixels, mask = sample.load()
    except MaskShapeError as exc:
        skips.skip("mask size differs from image", sample.key, exc.cause)
        return None
    except (ImageReadError, FileNotFoundError, OSError, ValueError) as exc:
        skips.skip("unreadable image or mask", sample.key, str(exc))
        return None
    if not np.isfinite(pixels).all():
        skips.skip("image has NaN/Inf pixels", sample.key)
        return None
    if not sample.unlabelled and np.count_nonzero(mask) < min_pixels:
        skips.skip("empty mask", sample.key, f"{np.count_nonzero(mask)} foreground pixels")
        return None
    return pixels, mask


# ----------------------------------------------------------------------------- sources
def read_groups(metadata_csv: Path, column: str = "patientid", file_column: str = "filename") -> dict[str, str]:
    """filename → group id (patient) from a metadata CSV."""
    with open(metadata_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and (column not in rows[0] or file_column not in rows[0]):
        raise DataError(f"{metadata_csv}: needs columns {file_column!r} and {column!r}, has {list(rows[0])}")
    return {row[file_column]: str(row[column]) for row in rows}


def folder_samples(root: str | Path, mask_suffix: str = DEFAULT_MASK_SUFFIX, skips: SkipLog | None = None,
                   group_column: str = "patientid", images_dir: str | Path | None = None,
                   masks_dir: str | Path | None = None) -> list[SegSample]:
    """``root/images`` + ``root/masks`` (mask = ``<image stem><mask_suffix>``); images without a mask are skipped
    and counted. Groups come from ``root/metadata.csv`` when present (else each image is its own group)."""
    root = Path(root)
    images_dir = Path(images_dir) if images_dir else root / "images"
    masks_dir = Path(masks_dir) if masks_dir else root / "masks"
    skips = skips if skips is not None else SkipLog()
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: mask folder not found")
    groups: dict[str, str] = {}
    metadata = root / "metadata.csv"
    if metadata.is_file():
        try:
            groups = read_groups(metadata, group_column)
        except DataError as exc:
            log.warning("%s; every image is its own group", exc)
    samples = []
    for image_path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask_path = masks_dir / f"{image_path.stem}{mask_suffix}"
        if not mask_path.is_file():
            skips.skip("image without mask", str(image_path), f"expected {mask_path.name}")
            continue
        samples.append(SegSample(key=str(image_path), group=groups.get(image_path.name, image_path.stem),
                                 source=f"folder:{root.name}", loader=_image_mask_loader(image_path, mask_path)))
    if not samples:
        raise DataError(f"{root}: no image has a mask (suffix {mask_suffix!r})")
    return samples


def structure_samples(root: str | Path, skips: SkipLog | None = None) -> list[SegSample]:
    """The train structures on the train slices of a ``prepare-ct-structures`` folder (its ``split.json``), one sample
    per slice: the mask is the slice's label PNG as it is, ``structures`` the train structures with at least the
    split's ``min_voxels`` there (the other labels — held-out structures among them — are never targets). All slices
    of one volume are one group (one patient)."""
    from collections import defaultdict

    root = Path(root)
    try:
        split = json.loads((root / "split.json").read_text())
        items = split["items"]["train"]
        volume = Path(split["volume"]).name
    except FileNotFoundError:
        raise DataError(f"{root}: no split.json (write the folder with `launch.py prepare-ct-structures`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{root / 'split.json'}: not a prepare-ct-structures split ({exc})") from None
    by_image: dict[str, dict[int, str]] = defaultdict(dict)
    for item in items:
        by_image[item["image"]][int(item["label"])] = str(item["structure"])
    skips = skips if skips is not None else SkipLog()
    samples = []
    for image, structures in sorted(by_image.items()):
        image_path = root / "images" / image
        labels_path = root / "labels" / f"{Path(image).stem}_labels.png"
        if not (image_path.is_file() and labels_path.is_file()):
            skips.skip("structure slice file missing", str(image_path), str(labels_path))
            continue
        samples.append(SegSample(key=str(image_path), group=volume, source=f"structures:{root.name}",
                                 loader=_label_image_loader(image_path, labels_path), structures=structures))
    if not samples:
        raise DataError(f"{root}: split.json lists no train structure on a train slice")
    return samples


def _label_image_loader(image_path: Path, labels_path: Path) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        pixels = load_pixels(image_path)
        return pixels, read_label_image(labels_path, pixels.shape).astype(np.int32)

    return load


def unlabelled_samples(images_dir: str | Path, only: Iterable[str] | None = None) -> list[SegSample]:
    """Images without masks (``unlabelled``: their targets come from the data engine); ``only``: image stems to use
    (e.g. the training split of a dataset — never its demo or validation images)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    keep = set(only) if only is not None else None
    samples = []
    for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if keep is None or path.stem in keep:
            samples.append(SegSample(key=str(path), group=path.stem, source=f"unlabelled:{images_dir.parent.name}",
                                     loader=_unlabelled_loader(path), unlabelled=True))
    if not samples:
        raise DataError(f"{images_dir}: no image to use")
    return samples


def _unlabelled_loader(path: Path) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        pixels = load_pixels(path)
        return pixels, np.zeros(pixels.shape, dtype=bool)

    return load


def read_label_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An integer label image (PNG: each pixel a label value, 0 = none) → (H, W) integer array. DataError when it is
    not a single-channel integer image; MaskShapeError when its size differs from the image's ``shape``."""
    from core_model.errors import MaskShapeError
    from core_model.io import detect_format, read_raster_array
    from core_model.io.types import DEFAULT_MAX_PIXELS

    array, _, _ = read_raster_array(path, detect_format(path), DEFAULT_MAX_PIXELS)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise DataError(f"{path}: a label mask must be a single-channel integer image, got {array.dtype} "
                        f"{array.shape}")
    if tuple(array.shape) != tuple(shape):
        raise MaskShapeError(path, f"mask shape {tuple(array.shape)} does not match image shape {tuple(shape)}")
    return array


def read_manifest(path: str | Path) -> list[dict]:
    """The exported training manifest → list of item dicts (JSON list, ``{"items": [...]}`` or JSON Lines).

    A document with a ``schema`` is checked against the contract (:func:`annotations_db.manifest.check_document`):
    an unknown schema or a newer version than this code reads is a DataError saying so."""
    from annotations_db.manifest import ManifestError, check_document

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl" or (text.lstrip().startswith("{") and "\n{" in text.strip()):
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            if isinstance(data, dict):
                check_document(data)
            items = data["items"] if isinstance(data, dict) else data
    except ManifestError as exc:
        raise DataError(f"{path}: {exc}") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a training manifest (JSON list, {{'items': [...]}} or JSON Lines): {exc}") from exc
    if not isinstance(items, list):
        raise DataError(f"{path}: manifest items must be a list")
    return items


def _manifest_path(root: Path, value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else (root / value).resolve()


def manifest_samples(path: str | Path, skips: SkipLog | None = None, splits: Iterable[str | None] | None = ("train", None),
                     split_counts: Counter | None = None) -> list[SegSample]:
    """Segmentation samples of a manifest; items with missing files / no mask are skipped and counted.

    ``splits``: keep items whose canonical split (:func:`annotations_db.manifest.normalise_split`: ``Train`` and
    ``training`` are ``train``) is in this set (None = items without a split); ``None`` keeps every split except the
    site's held-out one, which is read only when named. ``split_counts`` (if given) counts every item by canonical
    split, so the run's metrics say what was left out and why; an unknown split name is a counted skip.
    """
    from annotations_db.manifest import HELDOUT, ManifestError, check_item, normalise_split

    path = Path(path)
    skips = skips if skips is not None else SkipLog()
    keep = None if splits is None else {normalise_split(s) for s in splits}
    samples = []
    for index, item in enumerate(read_manifest(path)):
        name = f"{path.name}[{index}]"
        try:
            check_item(item)
            split = normalise_split(item.get("split"))
        except ManifestError as exc:
            skips.skip("manifest item breaks the contract", name, str(exc))
            continue
        if split_counts is not None:
            split_counts[split or "none"] += 1
        if (split not in keep) if keep is not None else split == HELDOUT:
            continue
        image_path = _manifest_path(path.parent, item["image"])
        if not image_path.is_file():
            skips.skip("manifest points to a missing file", name, str(image_path))
            continue
        if not item.get("mask"):
            skips.skip("image without mask", name, str(image_path))
            continue
        mask_path = _manifest_path(path.parent, item["mask"])
        if not mask_path.is_file():
            skips.skip("manifest points to a missing file", name, str(mask_path))
            continue
        clicks = [c for c in item.get("clicks") or [] if isinstance(c, dict) and {"x", "y"} <= set(c)]
        labels = {str(k): int(v) for k, v in (item.get("labels") or {}).items() if v in (0, 1, True, False)}
        samples.append(SegSample(key=_manifest_key(item, name), group=str(item.get("case_id", name)),
                                 source=f"manifest:{path.name}", loader=_image_mask_loader(image_path, mask_path),
                                 clicks=clicks, labels=labels, split=split, object_label=_object_label(item)))
    return samples


def _object_label(item: dict) -> str | None:
    """The label of a manifest item's labelled object (None: the default object, an unlabelled mask)."""
    found = item.get("object")
    label = found.get("label") if isinstance(found, dict) else None
    return label if isinstance(label, str) and label.strip() else None


def _manifest_key(item: dict, name: str) -> str:
    """A manifest item's sample key: its case id, with ``#object-N`` for a labelled object of an answer with several
    (one entry per object, all of the case's patient group)."""
    key = f"{item.get('case_id', name)}"
    found = item.get("object")
    object_id = found.get("id") if isinstance(found, dict) else None
    return f"{key}#object-{object_id}" if isinstance(object_id, int) and object_id > 0 else key


@lru_cache(maxsize=4)
def _volume(path: str):
    from core_model.io import load_volume

    return load_volume(path)


@lru_cache(maxsize=4)
def _volume_mask(path: str, labels: tuple[int, ...] | None):
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    return np.isin(data, labels) if labels else data > 0


def nifti_samples(volume_path: str | Path, mask_path: str | Path, axis: int = 2, min_pixels: int = 50,
                  labels: tuple[int, ...] | None = None, window: str = "lung",
                  skips: SkipLog | None = None) -> list[SegSample]:
    """2-D slices of a NIfTI volume where the mask has at least ``min_pixels`` voxels (``labels``: keep only these
    label values of a multilabel mask). Slices are shown the radiological way (patient's left on the image right)."""
    volume_path, mask_path = Path(volume_path), Path(mask_path)
    for p in (volume_path, mask_path):
        if not p.is_file():
            raise DataError(f"{p}: NIfTI file not found")
    skips = skips if skips is not None else SkipLog()
    volume = _volume(str(volume_path))
    mask3d = _volume_mask(str(mask_path), tuple(labels) if labels else None)
    if mask3d.shape != volume.shape:
        raise DataError(f"{mask_path}: mask shape {mask3d.shape} does not match volume shape {volume.shape}")
    counts = mask3d.sum(axis=tuple(a for a in range(3) if a != axis))
    samples = []
    for index in range(mask3d.shape[axis]):
        if counts[index] == 0:
            continue
        if counts[index] < min_pixels:
            skips.skip("mask slice below min_pixels", f"{volume_path.name}#{index}", f"{int(counts[index])} px")
            continue

        def load(index=index) -> tuple[np.ndarray, np.ndarray]:
            vol = _volume(str(volume_path))
            image = vol.slice(index, axis=axis, window=window)
            return np.ascontiguousarray(image.pixels, np.float32), vol.volume_mask_to_slice(
                _volume_mask(str(mask_path), tuple(labels) if labels else None), index, axis=axis)

        samples.append(SegSample(key=f"{volume_path}#{axis}:{index}", group=f"{volume_path.name}",
                                 source=f"nifti:{volume_path.name}", loader=load))
    if not samples:
        raise DataError(f"{mask_path}: no slice along axis {axis} has ≥ {min_pixels} mask voxels")
    return samples


CXRLT_META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath",
                      "PatientAge", "PatientSex")


def cxrlt_samples(csv_path: str | Path, image_root: str | Path | None = None, classes: Iterable[str] | None = None,
                  skips: SkipLog | None = None) -> tuple[list[ClsSample], tuple[str, ...]]:
    """CXR-LT ``train_labeled.csv`` layout → samples and the class columns. Blank cell → -1 (not assessed)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label CSV not found")
    skips = skips if skips is not None else SkipLog()
    root = Path(image_root) if image_root else csv_path.parent
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames or [] if c not in CXRLT_META_COLUMNS]
        rows = list(reader)
    if "fpath" not in (reader.fieldnames or []):
        raise DataError(f"{csv_path}: not the CXR-LT layout (no 'fpath' column)")
    classes = tuple(classes) if classes else tuple(columns)
    missing = [c for c in classes if c not in columns]
    if missing:
        raise DataError(f"{csv_path}: class columns not found: {missing}")
    samples = []
    for row in rows:
        path = root / row["fpath"]
        if not path.is_file():
            alt = root / "images" / Path(row["fpath"]).name
            path = alt if alt.is_file() else path
        if not path.is_file():
            skips.skip("label row points to a missing image", row["fpath"])
            continue
        labels = {}
        for c in classes:
            value = (row.get(c) or "").strip()
            if value == "":
                labels[c] = -1
            else:
                try:
                    labels[c] = 1 if float(value) > 0.5 else 0
                except ValueError:
                    labels[c] = -1
                    skips.skip("non-numeric label (masked)", f"{row['fpath']}:{c}", value)
        samples.append(ClsSample(key=row.get("dicom_id") or row["fpath"], group=str(row.get("subject_id") or row["fpath"]),
                                 path=path, labels=labels))
    if not samples:
        raise DataError(f"{csv_path}: no row points to an existing image under {root}")
    return samples, classes


# ----------------------------------------------------------------------------- splits
def split_by_group(items: list, holdout: float = 0.2, seed: int = 0, group=lambda s: s.group) -> tuple[list, list]:
    """Deterministic split by group (patient): about ``holdout`` of the items go to the second list; no group is in
    both. Groups are shuffled with ``seed`` and taken until the held-out share reaches the target."""
    if holdout <= 0:
        return list(items), []
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(str(group(item)), []).append(item)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    target = max(1, int(math.floor(holdout * len(items) + 0.5)))
    held, held_names = [], set()
    for name in names:
        if len(held) >= target:
            break
        if len(held) + len(groups[name]) > target + max(1, target // 4):
            continue  # keep the share close to the target: skip a very large group
        held.extend(groups[name])
        held_names.add(name)
    train = [item for item in items if str(group(item)) not in held_names]
    return train, held
