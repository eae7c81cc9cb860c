"""``python launch.py prepare-ct-structures``: a CT NIfTI + its multilabel mask → a 2-D dataset of axial slices with a
deterministic split of *structures* and *slices* into train and held-out, and manifests for ``eval-structures``.

What it writes under ``--out``:

* ``images/<volume>_z###.png``: every axial slice, 8-bit, through a CT window (default the ``abdomen`` preset,
  centre 40 / width 400 HU), in the app's radiological display orientation (``core_model.io.volume``'s
  :class:`SliceDisplay`: rows anterior → posterior, columns patient right → left);
* ``labels/<volume>_z###_labels.png``: the same slice of the multilabel mask through the same display transform,
  8-bit, each pixel the mask's label value (TotalSegmentator v1 values, ``label_map_totalseg_v1.json``; 0 = none);
* ``split.json``: the split and how it was made (no randomness: the same inputs and options give the same split):
  - **structures**: the ``--heldout-structures`` (default :data:`HELD_OUT_STRUCTURES`) are held out; every other label
    present in the mask is a train structure;
  - **slices**: slice ``z`` lies in band ``z // band``; the bands with ``band_index % every == offset`` are held out
    (default bands of 8 slices, every 4th band from band 2: z 16–23, 48–55, 80–87 of this CT = 21 % of the slices);
  - a (structure, slice) item exists where the structure has ≥ ``--min-voxels`` voxels on the slice;
* ``manifest_heldout.json``: held-out structures on held-out slices (never seen: neither the structure nor the slice);
  ``manifest_heldout_slices.json``: train structures on held-out slices; ``manifest_train.json``: train structures on
  train slices. Manifests in the format of :mod:`training.eval_structures` (label value per structure, ``only`` = the
  slice images of that structure);
* ``README.md``: provenance and attribution (the CT and its mask are TotalSegmentator's test files, Apache-2.0; the
  masks are TotalSegmentator *model outputs*, not expert annotations).

With ``--planes coronal,sagittal`` it writes instead a *training-only* folder (:func:`prepare_reformats`): every
``--stride``-th cut of each run of train slices (:func:`train_slabs`, so no cut crosses a held-out band) with the train
structures' labels, in the same layout, read by ``launch.py train --structures`` beside the axial folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.data import DataError

HELD_OUT_STRUCTURES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "urinary_bladder",
    "iliopsoas_left", "iliopsoas_right",
)
DEFAULT_WINDOW = "abdomen"
ATTRIBUTION = (
    "CT volume and multilabel mask: TotalSegmentator test files (github wasserth/TotalSegmentator, "
    "tests/reference_files/example_ct.nii.gz and example_seg.nii.gz), Apache-2.0. The masks are TotalSegmentator "
    "model outputs kept as regression references, not expert annotations. Label names: TotalSegmentator v1 "
    "(totalsegmentator/map_to_binary.py). Not for clinical use."
)


class StructureDataError(DataError):
    """Unusable CT / mask / label map for the structure dataset (names the file and the cause)."""


@dataclass(frozen=True)
class SliceSplit:
    """Every ``every``-th band of ``band`` consecutive slices, starting at band ``offset``, is held out."""

    band: int = 8
    every: int = 4
    offset: int = 2

    def __post_init__(self) -> None:
        if self.band < 1 or self.every < 2 or not 0 <= self.offset < self.every:
            raise ValueError(f"slice split needs band ≥ 1, every ≥ 2 and 0 ≤ offset < every, got {self}")

    def is_heldout(self, index: int) -> bool:
        return (index // self.band) % self.every == self.offset


@dataclass(frozen=True)
class SliceItem:
    """One structure on one slice: ``voxels`` of label ``label`` there."""

    structure: str
    label: int
    image: str
    index: int
    voxels: int


def volume_stem(volume: Path) -> str:
    return volume.name.removesuffix(".gz").removesuffix(".nii")


def slice_name(volume: Path, index: int) -> str:
    return f"{volume_stem(volume)}_z{index:03d}"


def read_label_map(path: Path) -> dict[int, str]:
    """``{"1": "spleen", ...}`` JSON → {1: "spleen", ...}."""
    try:
        raw = json.loads(path.read_text())
        return {int(value): str(name) for value, name in raw.items()}
    except FileNotFoundError:
        raise StructureDataError(f"{path}: label map not found") from None
    except (json.JSONDecodeError, AttributeError, ValueError) as exc:
        raise StructureDataError(f"{path}: not a JSON object of label value → name ({exc})") from None


def load_ct_and_labels(volume_path: Path, labels_path: Path):
    """(LoadedVolume in HU, int32 label array in the same voxel order); shapes and affines must agree."""
    from core_model.io import load_nifti_volume, read_nifti_array
    from core_model.io.types import DEFAULT_MAX_VOXELS

    for path in (volume_path, labels_path):
        if not path.is_file():
            raise StructureDataError(f"{path}: NIfTI file not found")
    volume = load_nifti_volume(volume_path, DEFAULT_MAX_VOXELS)
    labels, image = read_nifti_array(labels_path, DEFAULT_MAX_VOXELS, dtype=np.float64)
    if labels.shape != volume.shape:
        raise StructureDataError(f"{labels_path}: mask shape {labels.shape} does not match volume shape {volume.shape}")
    if not np.allclose(np.asarray(image.affine), volume.affine, atol=1e-3):
        raise StructureDataError(f"{labels_path}: mask affine differs from the volume's ({volume_path})")
    if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() > 255:
        raise StructureDataError(f"{labels_path}: label values must be integers 0–255")
    return volume, labels.astype(np.int32)


def display_label_slice(volume, labels: np.ndarray, index: int, axis: int) -> np.ndarray:
    """The label slice as :meth:`LoadedVolume.slice` displays the image slice (the same :class:`SliceDisplay`)."""
    return np.ascontiguousarray(volume.display(axis).forward(np.take(labels, index, axis=axis)))


def collect_items(labels: np.ndarray, axis: int, names: dict[int, str], min_voxels: int,
                  volume_path: Path) -> list[SliceItem]:
    """Every (structure, slice) with at least ``min_voxels`` voxels of the structure; label values without a name in
    the label map are an error."""
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in names]
    if unknown:
        raise StructureDataError(f"mask of {volume_path.name}: label values {unknown} are not in the label map")
    other_axes = tuple(a for a in range(3) if a != axis)
    items = []
    for value in present:
        counts = (labels == value).sum(axis=other_axes)
        items += [SliceItem(names[value], value, slice_name(volume_path, int(z)) + ".png", int(z), int(counts[z]))
                  for z in np.flatnonzero(counts >= min_voxels)]
    return items


def write_slices(volume, labels: np.ndarray, axis: int, window: str, out: Path, volume_path: Path) -> int:
    """All slices along ``axis`` as 8-bit image PNGs and label PNGs; returns the number of slices."""
    for index in range(volume.num_slices(axis)):
        save_slice(out, slice_name(volume_path, index), volume.slice(index, axis=axis, window=window).pixels,
                   display_label_slice(volume, labels, index, axis))
    return volume.num_slices(axis)


def save_slice(out: Path, name: str, pixels: np.ndarray, label_slice: np.ndarray) -> None:
    """``images/<name>.png`` (the windowed [0, 1] pixels, 8-bit) and ``labels/<name>_labels.png`` (label values)."""
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(out / "images" / f"{name}.png")
    Image.fromarray(label_slice.astype(np.uint8)).save(out / "labels" / f"{name}_labels.png")


def train_slabs(n_slices: int, split: SliceSplit) -> list[tuple[int, int]]:
    """The maximal runs [start, stop) of consecutive *train* slices: a reformat cut inside one never crosses a
    held-out slice band."""
    slabs: list[tuple[int, int]] = []
    for index in range(n_slices):
        if split.is_heldout(index):
            continue
        if slabs and slabs[-1][1] == index:
            slabs[-1] = (slabs[-1][0], index + 1)
        else:
            slabs.append((index, index + 1))
    return slabs


def write_reformats(volume, labels: np.ndarray, axis: int, split: SliceSplit, names: dict[int, str],
                    heldout_structures: set[str], planes: tuple[str, ...], stride: int, min_voxels: int,
                    window: str, out: Path, volume_path: Path) -> list[SliceItem]:
    """Every ``stride``-th coronal / sagittal slice of each train slab (:func:`train_slabs`) as image + label PNGs, in
    the app's display orientation; returns the train structures' items on them (voxels ≥ ``min_voxels``). Held-out
    slices and held-out structures' labels are never in a target (the latter appear as unlabelled tissue, as on the
    axial train slices)."""
    from core_model.io.volume import LoadedVolume

    items: list[SliceItem] = []
    for start, stop in train_slabs(volume.num_slices(axis), split):
        keep = np.arange(start, stop)
        slab = LoadedVolume(np.take(volume.data, keep, axis=axis), volume.affine, volume.metadata)
        slab_labels = np.take(labels, keep, axis=axis)
        for cut in (a for a in range(3) if a != axis and slab.display(a).plane in planes):
            for index in range(0, slab.num_slices(cut), stride):
                label_slice = display_label_slice(slab, slab_labels, index, cut)
                values, counts = np.unique(label_slice, return_counts=True)
                found = [(int(v), int(n)) for v, n in zip(values, counts) if v and n >= min_voxels
                         and names.get(int(v)) not in heldout_structures | {None}]
                if not found:
                    continue
                name = f"{volume_stem(volume_path)}_{slab.display(cut).plane}{index:03d}_z{start:03d}-{stop - 1:03d}"
                save_slice(out, name, slab.slice(index, axis=cut, window=window).pixels, label_slice)
                items += [SliceItem(names[v], v, f"{name}.png", index, n) for v, n in found]
    return items


def prepare_reformats(volume_path: Path, labels_path: Path, label_map_path: Path, out: Path,
                      heldout_structures: tuple[str, ...] = HELD_OUT_STRUCTURES, split: SliceSplit = SliceSplit(),
                      planes: tuple[str, ...] = ("coronal", "sagittal"), stride: int = 4, min_voxels: int = 30,
                      window: str = DEFAULT_WINDOW) -> dict:
    """A training-only folder beside the axial one: the train structures on coronal / sagittal cuts of the train slabs
    (:func:`write_reformats`), with a ``split.json`` that :func:`training.data.structure_samples` reads (its held-out
    groups are empty: the evaluation stays on the axial folder's held-out slices)."""
    from core_model.io.volume import axial_axis

    if stride < 1:
        raise ValueError(f"reformat stride must be ≥ 1, got {stride}")
    if not planes or set(planes) - {"coronal", "sagittal"}:
        raise ValueError(f"reformat planes are coronal and/or sagittal, got {','.join(planes)}")
    names = read_label_map(label_map_path)
    volume, labels = load_ct_and_labels(volume_path, labels_path)
    axis = axial_axis(volume.affine)
    items = write_reformats(volume, labels, axis, split, names, set(heldout_structures), planes, stride,
                            min_voxels, window, out, volume_path)
    if not items:
        raise StructureDataError(f"{labels_path}: no train structure has ≥ {min_voxels} voxels on a reformat")
    summary = {
        "volume": str(volume_path), "labels": str(labels_path), "label_map": str(label_map_path), "axis": axis,
        "planes": list(planes), "stride": stride, "window": window, "min_voxels": min_voxels,
        "slice_split": asdict(split), "train_slabs": train_slabs(volume.num_slices(axis), split),
        "heldout_structures": sorted(heldout_structures),
        "train_structures": sorted({i.structure for i in items}),
        "items": {"heldout": [], "heldout_slices": [], "train": [asdict(i) for i in items]},
        "attribution": ATTRIBUTION,
    }
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    slabs = ", ".join(f"{a}–{b - 1}" for a, b in summary["train_slabs"])
    (out / "README.md").write_text(
        f"# Reformatted CT slices for training only (written by `python launch.py prepare-ct-structures --planes`)\n\n"
        f"Every {stride}th {' / '.join(planes)} cut of the train slabs z {slabs} of {volume_path} (the held-out slice "
        f"bands are in none), with the train structures' labels ({len(items)} items on "
        f"{len({i.image for i in items})} images). Held-out structures: {', '.join(summary['heldout_structures'])}; "
        f"never a target.\n\n{ATTRIBUTION}\n")
    return summary


def manifest(name: str, items: list[SliceItem], description: str) -> dict:
    """An ``eval-structures`` manifest: one dataset (the slices), one structure per label value, ``only`` = its slices,
    ``object_label`` the name a reader gives such an object in the app (its ``CT_STRUCTURES`` group: "iliopsoas_left"
    → "Muscle"), which decides the decoder that answers its box."""
    from core_model.classes import ct_structure_group

    structures: dict[str, dict] = {}
    for item in sorted(items, key=lambda i: (i.label, i.index)):
        entry = structures.setdefault(item.structure, {
            "name": item.structure, "label": item.label,
            "object_label": ct_structure_group(item.structure) or item.structure, "only": []})
        entry["only"].append(item.image)
    return {"name": name, "description": description,
            "datasets": [{"name": name, "images": "images", "masks": "labels", "mask_suffix": "_labels.png",
                          "structures": list(structures.values())}]}


def split_items(items: list[SliceItem], heldout_structures: set[str],
                split: SliceSplit) -> dict[str, list[SliceItem]]:
    """The three groups: held-out structures on held-out slices, train structures on held-out slices, train
    structures on train slices (held-out structures on train slices are in none: not for training, not the test)."""
    groups: dict[str, list[SliceItem]] = {"heldout": [], "heldout_slices": [], "train": []}
    for item in items:
        slice_out, structure_out = split.is_heldout(item.index), item.structure in heldout_structures
        if slice_out:
            groups["heldout" if structure_out else "heldout_slices"].append(item)
        elif not structure_out:
            groups["train"].append(item)
    return groups


def prepare(volume_path: Path, labels_path: Path, label_map_path: Path, out: Path,
            heldout_structures: tuple[str, ...] = HELD_OUT_STRUCTURES, split: SliceSplit = SliceSplit(),
            min_voxels: int = 30, window: str = DEFAULT_WINDOW) -> dict:
    """Write the dataset (module doc); returns the split (also written as ``split.json``)."""
    from core_model.io.volume import axial_axis

    names = read_label_map(label_map_path)
    unknown = sorted(set(heldout_structures) - set(names.values()))
    if unknown:
        raise StructureDataError(f"{label_map_path}: held-out structures {unknown} are not in the label map")
    volume, labels = load_ct_and_labels(volume_path, labels_path)
    axis = axial_axis(volume.affine)
    items = collect_items(labels, axis, names, min_voxels, volume_path)
    absent = sorted(set(heldout_structures) - {i.structure for i in items})
    if absent:
        raise StructureDataError(f"{labels_path}: held-out structures {absent} have no slice with ≥ {min_voxels} voxels")
    n_slices = write_slices(volume, labels, axis, window, out, volume_path)
    groups = split_items(items, set(heldout_structures), split)
    heldout_slices = [i for i in range(n_slices) if split.is_heldout(i)]
    summary = {
        "volume": str(volume_path), "labels": str(labels_path), "label_map": str(label_map_path),
        "axis": axis, "plane": volume.display(axis).plane, "window": window, "n_slices": n_slices,
        "min_voxels": min_voxels, "slice_split": asdict(split),
        "heldout_slices": [slice_name(volume_path, i) + ".png" for i in heldout_slices],
        "train_slices": [slice_name(volume_path, i) + ".png" for i in range(n_slices) if i not in heldout_slices],
        "heldout_structures": sorted(heldout_structures),
        "train_structures": sorted({i.structure for i in items} - set(heldout_structures)),
        "items": {group: [asdict(i) for i in rows] for group, rows in groups.items()},
        "attribution": ATTRIBUTION,
    }
    descriptions = {"heldout": "held-out structures on held-out slices",
                    "heldout_slices": "train structures on held-out slices",
                    "train": "train structures on train slices"}
    for group, rows in groups.items():
        text = json.dumps(manifest(f"ct_{group}", rows, descriptions[group]), indent=1)
        (out / f"manifest_{group}.json").write_text(text + "\n")
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "README.md").write_text(_readme(summary, groups))
    return summary


def slice_ranges(indices: list[int]) -> str:
    """[16, 17, 18, 48, 49] -> '16–18, 48–49'."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _readme(summary: dict, groups: dict[str, list[SliceItem]]) -> str:
    counts = ", ".join(f"{g}: {len(rows)} items on {len({i.index for i in rows})} slices" for g, rows in groups.items())
    split = summary["slice_split"]
    heldout = [i for i in range(summary["n_slices"]) if SliceSplit(**split).is_heldout(i)]
    return (f"# Axial CT slices with per-slice label PNGs (written by `python launch.py prepare-ct-structures`)\n\n"
            f"Source: {summary['volume']} + {summary['labels']} ({summary['n_slices']} {summary['plane']} slices, "
            f"window {summary['window']}, radiological display orientation).\n"
            f"Held-out structures: {', '.join(summary['heldout_structures'])}. Held-out slices: z "
            f"{slice_ranges(heldout)} (bands of {split['band']} slices, every {split['every']}th band from band "
            f"{split['offset']}). Items (structure on slice, ≥ {summary['min_voxels']} voxels): {counts}.\n\n"
            f"{ATTRIBUTION}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py prepare-ct-structures", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ct = "../shared/data/ct_nifti/"
    p.add_argument("--volume", default=ct + "example_ct.nii.gz", help="CT NIfTI (HU)")
    p.add_argument("--labels", default=ct + "example_ct_totalseg104_multilabel.nii.gz", help="multilabel mask NIfTI")
    p.add_argument("--label-map", default=ct + "label_map_totalseg_v1.json", help="JSON label value → name")
    p.add_argument("--out", default="data/ct_structures", help="output folder")
    p.add_argument("--heldout-structures", default=",".join(HELD_OUT_STRUCTURES), help="comma list of names")
    p.add_argument("--band", type=int, default=8, help="slices per band")
    p.add_argument("--every", type=int, default=4, help="every N-th band is held out")
    p.add_argument("--offset", type=int, default=2, help="... starting with this band")
    p.add_argument("--min-voxels", type=int, default=30, help="a structure counts on a slice from this many voxels")
    p.add_argument("--window", default=DEFAULT_WINDOW, help="CT window preset (core_model.io.types.WINDOW_PRESETS)")
    p.add_argument("--planes", default="", help="training-only reformats instead of the axial dataset: comma list of "
                   "coronal, sagittal cut inside the train slabs (prepare_reformats)")
    p.add_argument("--stride", type=int, default=4, help="with --planes: every N-th cut")
    return p


def main(argv: list[str] | None = None) -> int:
    from core_model.errors import ImageReadError

    args = build_parser().parse_args(argv)
    try:
        split = SliceSplit(args.band, args.every, args.offset)
        heldout = tuple(s for s in args.heldout_structures.split(",") if s)
        if args.planes:
            summary = prepare_reformats(Path(args.volume), Path(args.labels), Path(args.label_map), Path(args.out),
                                        heldout, split, tuple(args.planes.split(",")), args.stride, args.min_voxels,
                                        args.window)
            print(f"prepare-ct-structures: {len(summary['items']['train'])} train items on {args.planes} cuts of the "
                  f"train slabs → {args.out}")
            return 0
        summary = prepare(Path(args.volume), Path(args.labels), Path(args.label_map), Path(args.out),
                          heldout, split, args.min_voxels, args.window)
    except (DataError, ImageReadError, ValueError, OSError) as exc:
        print(f"prepare-ct-structures: {exc}", file=sys.stderr)
        return 2
    items = summary["items"]
    print(f"prepare-ct-structures: {summary['n_slices']} slices → {args.out}; held-out "
          f"{len(summary['heldout_slices'])} slices, {len(summary['heldout_structures'])} structures; items: "
          + ", ".join(f"{g} {len(v)}" for g, v in items.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
