"""``python launch.py eval-structures``: the ``eval-clicks`` RITM protocol over several datasets / structures in one
run, a checkpoint and a baseline (default: stock LiteMedSAM) on the same images, objects and clicks; JSON + Markdown.

Manifest (JSON, or YAML for a ``.yaml``/``.yml`` file; relative paths are relative to the manifest's folder)::

    {"name": "ct_heldout",
     "datasets": [
       {"name": "ct_slices", "images": "images", "masks": "labels", "mask_suffix": "_labels.png",
        "structures": [
          {"name": "spleen", "label": 1, "only": ["example_ct_z082.png", "example_ct_z083.png"]},
          {"name": "kidney_left", "label": 3, "only": "kidney_left_slices.txt"}]},
       {"name": "cxr_lungs", "images": "../shared/data/cxr_lungs/images", "masks": "../shared/data/cxr_lungs/masks",
        "mask_suffix": "_lung.png", "only": "../assets/model/heldout_images.txt",
        "structures": [{"name": "lungs"}]}]}

* dataset: ``name``, ``images`` (folder), ``masks`` (folder), and defaults for its structures: ``mask_suffix`` (the
  mask of image ``<stem>.png`` is ``masks/<stem><mask_suffix>``), ``only``, ``text``;
* structure: ``name`` (unique within its dataset), optional ``label`` (an integer: the structure is the pixels of
  that value in a multilabel mask; without it, every pixel > 0), ``mask_suffix``, ``only`` (held-out image file names:
  a list, or a file as ``eval-clicks --only`` reads it: one name per line or a split.json with ``heldout``), ``text``
  (a text prompt for the whole mask, used where the model's language pathway is trained; default none),
  ``object_label`` (the objects' label as the app gives it with a box prompt, which decides the decoder that answers
  the box — ``BiasCareModel.answers_boxes_for``; default the structure's ``name``);
* images whose mask has no pixel of the structure's label are left out (counted); a label that no mask has is an error.

Per structure and model: the single-dataset evaluator's :func:`training.eval_clicks.evaluate` (NoC@85/90 and their
failures, mIoU@1/3/5/10/20, box IoU, max_drop, the curve, every object's IoUs) and
:func:`training.eval_clicks.bootstrap_replicates` over the structure's images (95 % percentile intervals; structure
number n of the run draws with seed ``--seed`` + n for both models, so the replicates are paired between the models
— the checkpoint − baseline differences get intervals too — and independent between structures).
Overall = the mean over structures (each structure weighs the same); its interval takes each replicate's per-structure
figures and averages them (a bootstrap stratified by structure).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import DataError, read_label_image
from training.eval_clicks import (
    _read_only,
    bootstrap_replicates,
    evaluate,
    find_pairs,
    load_predictor,
    percentile_intervals,
)

log = logging.getLogger("training.eval_structures")

HEADLINE = ("noc@85", "noc@90", "miou@1", "miou@5", "miou@20", "box_iou", "max_drop")
TABLE_COLUMNS = (("noc@85", "NoC@85", 2), ("noc@90", "NoC@90", 2), ("miou@1", "mIoU@1", 3), ("miou@5", "mIoU@5", 3),
                 ("miou@20", "mIoU@20", 3), ("box_iou", "box IoU", 3), ("max_drop", "max drop", 3))


class ManifestError(DataError):
    """Unusable manifest: names the manifest file, the dataset / structure and the cause."""


@dataclass
class Structure:
    """One row of the table: a structure of a dataset and the (image, mask) pairs it is evaluated on."""

    dataset: str
    name: str
    images: Path
    masks: Path
    mask_suffix: str
    label: int | None = None
    only: set[str] | None = None
    text: str | None = None
    object_label: str | None = None  # the objects' label given with the box prompt (default: the structure's name)
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    without_mask: list[str] = field(default_factory=list)
    without_structure: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


# ----------------------------------------------------------------------------- masks
def load_label_mask(path: Path, shape: tuple[int, int], label: int | None) -> np.ndarray:
    """Bool (H, W) mask of ``label`` in an integer label image (PNG); ``label`` None = every pixel > 0. Raises
    MaskShapeError when the mask's size differs from the image's."""
    array = read_label_image(path, shape)
    return array > 0 if label is None else array == label


def _label_present(path: Path, label: int) -> bool:
    from core_model.io import detect_format, read_raster_array
    from core_model.io.types import DEFAULT_MAX_PIXELS

    return bool((read_raster_array(path, detect_format(path), DEFAULT_MAX_PIXELS)[0] == label).any())


# ----------------------------------------------------------------------------- manifest
def read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # JSON / YAML syntax
        raise ManifestError(f"{path}: cannot parse the manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise ManifestError(f"{path}: a manifest is an object with a non-empty list 'datasets'")
    return data


def _only(value, base: Path, where: str) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return {Path(str(v)).name for v in value}
    if isinstance(value, str):
        file = base / value
        if not file.is_file():
            raise ManifestError(f"{where}: 'only' file {file} not found")
        return _read_only(str(file))
    raise ManifestError(f"{where}: 'only' must be a list of image names or a file path")


def _structure(entry: dict, dataset: dict, base: Path, where: str) -> Structure:
    if not isinstance(entry, dict) or not entry.get("name"):
        raise ManifestError(f"{where}: every structure needs a 'name'")
    where = f"{where}, structure {entry['name']!r}"
    label = entry.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        raise ManifestError(f"{where}: 'label' must be an integer, got {label!r}")
    suffix = entry.get("mask_suffix", dataset.get("mask_suffix"))
    if not suffix:
        raise ManifestError(f"{where}: no 'mask_suffix' (structure or dataset)")
    return Structure(dataset=str(dataset["name"]), name=str(entry["name"]), images=base / dataset["images"],
                     masks=base / dataset["masks"], mask_suffix=str(suffix), label=label,
                     only=_only(entry.get("only", dataset.get("only")), base, where),
                     text=entry.get("text", dataset.get("text")),
                     object_label=str(entry.get("object_label", entry["name"])))


def load_manifest(path: Path) -> list[Structure]:
    """The manifest's structures (module doc), each with its (image, mask) pairs found; raises ManifestError."""
    data, base = read_manifest(path), path.parent
    structures: list[Structure] = []
    for number, dataset in enumerate(data["datasets"], start=1):
        where = f"{path}: dataset {dataset.get('name', number)!r}" if isinstance(dataset, dict) else f"{path}"
        if not isinstance(dataset, dict) or not all(dataset.get(k) for k in ("name", "images", "masks")):
            raise ManifestError(f"{where}: a dataset needs 'name', 'images' and 'masks'")
        for key in ("images", "masks"):
            if not (base / dataset[key]).is_dir():
                raise ManifestError(f"{where}: {key} folder {base / dataset[key]} not found")
        if not isinstance(dataset.get("structures"), list) or not dataset["structures"]:
            raise ManifestError(f"{where}: a dataset needs a non-empty list 'structures'")
        for entry in dataset["structures"]:
            structure = _structure(entry, dataset, base, where)
            find_structure_pairs(structure, where)
            structures.append(structure)
    return structures


def find_structure_pairs(structure: Structure, where: str) -> None:
    """Fill ``structure.pairs``: its images with a mask that holds its label; errors name the cause."""
    pairs, structure.without_mask = find_pairs(structure.images, structure.masks, structure.mask_suffix,
                                               structure.only)
    if structure.only is not None:
        found = {image.name for image, _ in pairs} | set(structure.without_mask)
        absent = sorted(structure.only - found)
        if absent:
            raise ManifestError(f"{where}: {len(absent)} 'only' images not in {structure.images}: {absent[:5]}")
    if not pairs:
        raise ManifestError(f"{where}: no image in {structure.images} has a mask {structure.mask_suffix!r} in "
                            f"{structure.masks}")
    if structure.label is not None:
        structure.without_structure = [image.name for image, mask in pairs if not _label_present(mask, structure.label)]
        pairs = [(image, mask) for image, mask in pairs if image.name not in set(structure.without_structure)]
        if not pairs:
            raise ManifestError(f"{where}: label {structure.label} occurs in none of its masks in {structure.masks}")
    structure.pairs = pairs


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over the (sorted) list, first and last included; deterministic."""
    if not limit or len(items) <= limit:
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Protocol:
    max_clicks: int = 20
    refine_clicks: int = 5
    rule: str = "depth"
    click_grid: str = "original"
    min_object_fraction: float = 0.002
    box: bool = True
    bootstrap: int = 1000
    seed: int = 0


def evaluate_structure(predictor, structure: Structure, protocol: Protocol,
                       seed: int | None = None) -> tuple[dict, dict[str, list[float]]]:
    """One model on one structure: (table row, bootstrap replicates drawn with ``seed``, default the protocol's)."""
    result = evaluate(predictor, structure.pairs, protocol.max_clicks, protocol.refine_clicks, protocol.rule,
                      protocol.click_grid, protocol.min_object_fraction, structure.text, protocol.box,
                      mask_loader=lambda path, shape: load_label_mask(path, shape, structure.label),
                      label=structure.object_label)
    row = {key: result.get(key) for key in HEADLINE}
    row.update({"noc@85_failed": result["grids"]["original"]["noc@85_failed"],
                "noc@90_failed": result["grids"]["original"]["noc@90_failed"],
                "miou@3": result.get("miou@3"), "miou@10": result.get("miou@10"),
                "text_whole_iou": result.get("text_whole_iou"),
                "per_object_max_drop": result["grids"]["original"]["per_object_max_drop"],
                "n_images": result["n_images"], "n_objects": result["n_objects"],
                "objects_skipped_small": result["objects_skipped_small"], "seconds": round(result["seconds"], 1),
                "curve": [round(v, 4) for v in result["curves"]["original"]],
                "model_grid": {k: result["grids"]["model"].get(k) for k in ("noc@85", "noc@90", "miou@1", "miou@5",
                                                                           "miou@20", "box_iou")}})
    seed = protocol.seed if seed is None else seed
    replicates = bootstrap_replicates(result["objects"], protocol.bootstrap, seed, protocol.max_clicks) \
        if protocol.bootstrap else {}
    row["intervals"] = percentile_intervals(replicates) if replicates else {}
    row["objects"] = [{k: o[k] for k in ("image", "component", "pixels", "ious", "box_iou")} for o in result["objects"]]
    return row, replicates


def _mean_over_structures(rows: list[dict]) -> dict:
    out = {}
    for key in HEADLINE:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if len(values) == len(rows) else None
    return out


def _replicate_mean(replicates: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per replicate, the mean over structures of each figure every structure has."""
    keys = set.intersection(*(set(r) for r in replicates)) if replicates else set()
    return {key: list(np.mean([r[key] for r in replicates], axis=0)) for key in sorted(keys)}


def _difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, list[float]]:
    return {key: list(np.subtract(a[key], b[key])) for key in a.keys() & b.keys()}


def same_objects(rows: list[dict]) -> bool:
    """True when every model's row has the same objects (image, component, pixels)."""
    signatures = [[(o["image"], o["component"], o["pixels"]) for o in row["objects"]] for row in rows]
    return all(s == signatures[0] for s in signatures)


def evaluate_models(models: dict[str, object], structures: list[Structure], protocol: Protocol) -> dict:
    """Every model (label → predictor) on every structure; the JSON-ready result (module doc). The first model is
    the baseline of the differences. Structure ``n`` draws its resamples with seed ``protocol.seed + n`` for every
    model: paired between models, independent between structures."""
    table, replicates = [], {label: [] for label in models}
    for number, structure in enumerate(structures):
        entry = {"dataset": structure.dataset, "structure": structure.name, "label": structure.label,
                 "n_images": len(structure.pairs), "images": [image.name for image, _ in structure.pairs],
                 "images_without_mask": structure.without_mask,
                 "images_without_structure": structure.without_structure, "models": {}}
        for label, predictor in models.items():
            log.info("%s: %s (%d images)", label, structure.key, len(structure.pairs))
            entry["models"][label], samples = evaluate_structure(predictor, structure, protocol, protocol.seed + number)
            replicates[label].append(samples)
        entry["same_objects"] = same_objects(list(entry["models"].values()))
        entry["n_objects"] = entry["models"][next(iter(models))]["n_objects"]
        table.append(entry)
    return {"structures": table, **_summaries(table, replicates)}


def _summaries(table: list[dict], replicates: dict[str, list[dict[str, list[float]]]]) -> dict:
    """Overall means (with stratified intervals) and the paired differences against the first model."""
    labels = list(replicates)
    baseline = labels[0]
    overall = {}
    for label in labels:
        overall[label] = _mean_over_structures([entry["models"][label] for entry in table])
        means = _replicate_mean(replicates[label])
        overall[label]["intervals"] = percentile_intervals(means) if means else {}
    differences: dict = {}
    for label in labels[1:]:
        per_structure = {}
        for entry, mine, theirs in zip(table, replicates[label], replicates[baseline]):
            point = {k: _subtract(entry["models"][label].get(k), entry["models"][baseline].get(k)) for k in HEADLINE}
            per_structure[f"{entry['dataset']}/{entry['structure']}"] = {
                **point, "intervals": percentile_intervals(_difference(mine, theirs)) if mine else {}}
        overall_point = {k: _subtract(overall[label][k], overall[baseline][k]) for k in HEADLINE}
        paired = _difference(_replicate_mean(replicates[label]), _replicate_mean(replicates[baseline]))
        differences[f"{label} - {baseline}"] = {
            "per_structure": per_structure,
            "overall": {**overall_point, "intervals": percentile_intervals(paired) if paired else {}}}
    return {"overall": {"what": "mean over structures (each structure weighs the same)", "n_structures": len(table),
                        **overall},
            "differences": differences, "same_objects": all(entry["same_objects"] for entry in table)}


def _subtract(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


# ----------------------------------------------------------------------------- Markdown
def _cell(row: dict, key: str, digits: int) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    interval = row.get("intervals", {}).get(key)
    text = f"{value:.{digits}f}"
    return f"{text} ({interval[0]:.{digits}f}–{interval[1]:.{digits}f})" if interval else text


def markdown_table(result: dict) -> str:
    """Per structure, one line per model (the baseline first), then the overall mean over structures; intervals in
    brackets (95 %, bootstrap over each structure's images; overall: stratified by structure)."""
    labels = [m["label"] for m in result["models"]]
    names = {m["label"]: m["model_version"] for m in result["models"]}
    head = "| structure | images / objects | model | " + " | ".join(t for _, t, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(TABLE_COLUMNS))]
    for entry in result["structures"]:
        for label in labels:
            row = entry["models"][label]
            cells = " | ".join(_cell(row, key, digits) for key, _, digits in TABLE_COLUMNS)
            lines.append(f"| {entry['structure']} ({entry['dataset']}) | {entry['n_images']} / {entry['n_objects']} | "
                         f"{names[label]} | {cells} |")
    n = len(result["structures"])
    for label in labels:
        cells = " | ".join(_cell(result["overall"][label], key, digits) for key, _, digits in TABLE_COLUMNS)
        lines.append(f"| **mean over {n} structures** | | **{names[label]}** | {cells} |")
    return "\n".join(lines) + "\n"


def markdown_differences(result: dict) -> str:
    """Paired differences (model − baseline) per structure and overall, with their bootstrap intervals."""
    lines = []
    for name, block in result["differences"].items():
        lines += [f"| {name} | " + " | ".join(t for _, t, _ in TABLE_COLUMNS) + " |", "|" + "---|" * (1 + len(TABLE_COLUMNS))]
        rows = list(block["per_structure"].items()) + [("**mean over structures**", block["overall"])]
        for key_name, row in rows:
            lines.append(f"| {key_name} | " + " | ".join(_cell(row, key, digits) for key, _, digits in TABLE_COLUMNS)
                         + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py eval-structures", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, help="manifest JSON/YAML (repeatable: concatenated)")
    p.add_argument("--checkpoint", default=None, help="project checkpoint (default: the shipped one)")
    p.add_argument("--baseline", default="stock", help="'stock' (LiteMedSAM), a checkpoint path, or 'none'")
    p.add_argument("--json", required=True, help="output JSON path ('-' = stdout)")
    p.add_argument("--markdown", default=None, help="also write the Markdown tables here")
    p.add_argument("--limit", action="append", default=[], metavar="[DATASET=]N",
                   help="at most N images per structure (of that dataset's structures only, with DATASET=), spread "
                        "evenly over its sorted images; repeatable")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--refine-clicks", type=int, default=3, help="corrective clicks after the box prompt")
    p.add_argument("--rule", default="depth", choices=("depth", "area"))
    p.add_argument("--click-grid", default="original", choices=("original", "model"))
    p.add_argument("--min-object-fraction", type=float, default=0.002)
    p.add_argument("--no-box", action="store_true")
    p.add_argument("--name-as-text", action="store_true",
                   help="a structure without a 'text' gets its name as the text prompt ('kidney_left' → 'left kidney', "
                        "the phrase training uses)")
    p.add_argument("--bootstrap", type=int, default=1000, help="image resamples per structure (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--device", default="cpu")
    return p


def parse_limits(values: list[str]) -> dict[str, int]:
    """['3', 'ct=2'] -> {'': 3, 'ct': 2} ('' = every dataset without its own limit)."""
    limits = {}
    for value in values:
        dataset, _, number = value.rpartition("=")
        if not number.isdigit() or int(number) < 1:
            raise ManifestError(f"--limit {value!r}: expected N or DATASET=N with N ≥ 1")
        limits[dataset] = int(number)
    return limits


def _load_models(args) -> dict[str, object]:
    models = {}
    if args.baseline != "none":
        models["stock" if args.baseline == "stock" else "baseline"] = load_predictor(
            args.baseline, args.device, args.cache_dir)
    models["checkpoint"] = load_predictor(args.checkpoint, args.device, args.cache_dir)
    return models


def _model_info(label: str, predictor, checkpoint) -> dict:
    model = predictor.model
    if checkpoint is not None and Path(checkpoint).is_file():
        path = Path(checkpoint).resolve()
        shown = str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)
    else:
        shown = "stock"
    return {"label": label, "checkpoint": shown, "model_version": model.info.version, "encoder_version": model.encoder_version}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from core_model.errors import ImageReadError
    from core_model.model import CheckpointError

    try:
        structures = [s for m in args.manifest for s in load_manifest(Path(m))]
        keys = [s.key for s in structures]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ManifestError(f"{', '.join(args.manifest)}: structures listed twice: {duplicates}")
        limits = parse_limits(args.limit)
        for structure in structures:
            structure.pairs = spread(structure.pairs, limits.get(structure.dataset, limits.get("")))
            if args.name_as_text and not structure.text:
                from training.cache import structure_phrases

                structure.text = structure_phrases(structure.name)[0]
        loaded = _load_models(args)
    except (DataError, ImageReadError, CheckpointError) as exc:  # each names the file and the cause
        print(f"eval-structures: {exc}", file=sys.stderr)
        return 2
    protocol = Protocol(args.max_clicks, args.refine_clicks, args.rule, args.click_grid, args.min_object_fraction,
                        not args.no_box, args.bootstrap, args.seed)
    try:
        result = evaluate_models({label: p for label, (p, _) in loaded.items()}, structures, protocol)
    except (DataError, ImageReadError) as exc:
        print(f"eval-structures: {exc}", file=sys.stderr)
        return 2
    result = {"models": [_model_info(label, p, c) for label, (p, c) in loaded.items()],
              "manifests": args.manifest, "protocol": {**protocol.__dict__, "limit_per_structure": parse_limits(args.limit),
                                                       "bootstrap_unit": "image", "level": 0.95}, **result}
    _write(result, args)
    return 0


def compact_json(result: dict) -> str:
    """Indented JSON with every list of numbers on one line (the per-object IoU curves stay short)."""
    import re

    def inline(match: re.Match) -> str:
        return "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]"

    return re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]", inline, json.dumps(result, indent=1))


def _write(result: dict, args) -> None:
    text = compact_json(result)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown_table(result) + "\n" + markdown_differences(result))
    for label, overall in result["overall"].items():
        if label in {m["label"] for m in result["models"]}:
            figures = ", ".join(f"{title} {_cell(overall, key, digits)}" for key, title, digits in TABLE_COLUMNS)
            print(f"eval-structures: {label}: mean over {len(result['structures'])} structures: {figures}",
                  file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
