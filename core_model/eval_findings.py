"""``python launch.py eval-findings``: how good a findings AI source is on labelled chest X-rays.

    python launch.py eval-findings --images ../shared/data/nih_cxr14_sample/images \\
        --labels ../shared/data/nih_cxr14_sample/Data_Entry_2017_v2020_subset.csv \\
        --ids assets/model/findings_demo_ids.txt --json out/findings_demo.json

Labels: the NIH ``Data_Entry_2017`` layout or the CXR-LT ``train_labeled.csv`` layout (:mod:`core_model.io.cxrlt`).
Sources (``--source``): ``builtin`` (the default checkpoint), ``checkpoint:PATH``, ``csv:PATH`` (a CXR-LT submission
CSV; ``--thresholds`` gives the supplier's operating points) or ``xrv:PATH`` (torchxrayvision weights from a local
file, :mod:`core_model.xrv_source`). Printed and written: per-class AUROC with 95 % bootstrap intervals, macro AUROC
with its interval, ECE, mean probability against prevalence, and — at the source's own operating points (the
suggestion rule of :mod:`core_model.findings`) — sensitivity, specificity and how many images would be suggested.

Exit codes: 0 done, 2 unusable input (the message names the file and the cause).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core_model.classes import label_set
from core_model.findings import FindingsCard, evaluate, supplier_card
from core_model.io.cxrlt import FindingsTableError, LabelRow, image_id, read_labels, read_submission, read_thresholds

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
Predict = Callable[[list[tuple[str, Path]]], dict[str, dict[str, float]]]


class EvalInputError(ValueError):
    """Unusable evaluator input (no images found, a bad --source); names the file and the cause."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py eval-findings", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", required=True, help="folder of the images (searched recursively by file stem)")
    p.add_argument("--labels", required=True, help="NIH Data_Entry_2017 or CXR-LT train_labeled.csv layout")
    p.add_argument("--ids", default=None, help="text file of image ids (file stems), one per line: evaluate only these")
    p.add_argument("--source", default="builtin", help="builtin | checkpoint:PATH | csv:PATH | xrv:PATH")
    p.add_argument("--thresholds", default=None, help="csv source: the supplier's thresholds (JSON or class,threshold CSV)")
    p.add_argument("--xrv-weights-name", default="densenet121-res224-all", help="xrv source: which weights the file holds")
    p.add_argument("--trust-pickle", action="store_true", help="xrv source: allow a whole pickled model (runs its code)")
    p.add_argument("--label-set", default="cxr-lt-26", choices=["cxr-lt-26", "cxr-lt-40"])
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap rounds for the intervals")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the full result here")
    p.add_argument("--predictions-out", default=None,
                   help="also write the source's predictions as a CXR-LT submission CSV (importable as a study's AI)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except (FindingsTableError, EvalInputError) as error:
        print(f"eval-findings: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def run(args: argparse.Namespace) -> dict:
    """Read labels, find the images, run the source, evaluate: the JSON-ready result."""
    rows = select_rows(read_labels(args.labels), args.ids)
    located, missing = locate_images(rows, Path(args.images))
    if not located:
        raise EvalInputError(f"{args.images}: none of the {len(rows)} labelled images found there")
    card, predict = open_source(args)
    predictions = predict([(row.image_id, path) for row, path in located])
    if args.predictions_out:
        write_predictions(Path(args.predictions_out), predictions, label_set(args.label_set))
    scored = [row for row, _ in located if row.image_id in predictions]
    classes = [c for c in label_set(args.label_set) if any(c in row.labels for row in scored)]
    probabilities = np.array([[predictions[r.image_id].get(c, np.nan) for c in classes] for r in scored])
    labels = np.array([[r.labels.get(c, -1) for c in classes] for r in scored])
    outputs = [c for k, c in enumerate(classes) if np.isfinite(probabilities[:, k]).all()
               and c in card.evidence and card.evidence[c].shows_probability]
    evidence, summary = evaluate(classes, np.nan_to_num(probabilities, nan=0.5), labels, trained=outputs,
                                 rounds=args.bootstrap)
    return {"source": {"name": card.name, "kind": card.kind, "origin": card.origin, "label_set": args.label_set},
            "labels": str(args.labels), "images": str(args.images), "ids": args.ids,
            "images_evaluated": len(scored), "images_missing": missing,
            "images_without_prediction": [r.image_id for r, _ in located if r.image_id not in predictions],
            "summary": summary, "bootstrap_rounds": args.bootstrap,
            "classes": {c: {**_measured(evidence[c]), **at_source_operating_point(card, c, probabilities[:, k],
                                                                                 labels[:, k])}
                        for k, c in enumerate(classes)}}


def _measured(ev) -> dict:
    """What this run measured of a class (its counts and AUROC here), without the evaluate() verdicts that only
    mean something on a validation split."""
    data = asdict(ev)
    return {k: data[k] for k in ("n_pos", "n_neg", "auroc", "auroc_low", "auroc_high")} | {
        "has_output": ev.shows_probability}


def write_predictions(path: Path, predictions: dict[str, dict[str, float]], classes: tuple[str, ...]) -> None:
    """{image id: {class: p}} → a CXR-LT submission CSV (``dicom_id`` + every class of the label set, as the layout
    requires); EvalInputError when the source has no output for some class."""
    import csv

    lacking = sorted({c for probs in predictions.values() for c in classes if c not in probs})
    if lacking:
        raise EvalInputError(f"{path}: not written — the source has no output for {lacking}, and a CXR-LT "
                             f"submission has all {len(classes)} classes")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", *classes])
        for key, probs in predictions.items():
            writer.writerow([key, *(repr(float(probs[c])) for c in classes)])


def select_rows(rows: list[LabelRow], ids_file: str | None) -> list[LabelRow]:
    if ids_file is None:
        return rows
    try:
        wanted = {line.strip() for line in Path(ids_file).read_text().splitlines() if line.strip()}
    except OSError as error:
        raise EvalInputError(f"{ids_file}: cannot read the id list ({error})") from None
    chosen = [row for row in rows if row.image_id in wanted]
    if not chosen:
        raise EvalInputError(f"{ids_file}: none of its {len(wanted)} ids is in the labels file")
    return chosen


def locate_images(rows: list[LabelRow], folder: Path) -> tuple[list[tuple[LabelRow, Path]], list[str]]:
    """Each row's image: the table's own relative path under ``folder`` if it exists, else a file with its stem."""
    if not folder.is_dir():
        raise EvalInputError(f"{folder}: not a folder")
    by_stem = {image_id(p.name): p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    located, missing = [], []
    for row in rows:
        path = folder / row.file if row.file and (folder / row.file).is_file() else by_stem.get(row.image_id)
        (located.append((row, path)) if path is not None else missing.append(row.image_id))
    return located, missing


def open_source(args: argparse.Namespace) -> tuple[FindingsCard, Predict]:
    kind, _, where = args.source.partition(":")
    if kind == "builtin" or kind == "checkpoint":
        return _model_source(where or None, args.label_set)
    if kind == "csv" and where:
        submission = read_submission(where)  # rows with a bad cell count as images without a prediction
        classes = submission.classes
        table = {row.dicom_id: row.probabilities for row in submission.rows}
        thresholds = read_thresholds(args.thresholds, classes) if args.thresholds else None
        card = supplier_card(Path(where).stem, "imported", f"predictions imported from {where}", args.label_set,
                             classes, thresholds)
        return card, lambda items: {i: table[i] for i, _ in items if i in table}
    if kind == "xrv" and where:
        from core_model.xrv_source import XrvSourceError, load_xrv_source

        try:
            source = load_xrv_source(where, weights_name=args.xrv_weights_name, trust_pickle=args.trust_pickle)
        except XrvSourceError as error:
            raise EvalInputError(str(error)) from None
        return source.card(), lambda items: {i: source.predict(_pixels(p)) for i, p in items}
    raise EvalInputError(f"--source {args.source!r}: expected builtin, checkpoint:PATH, csv:PATH or xrv:PATH")


def _model_source(checkpoint: str | None, label_set_name: str) -> tuple[FindingsCard, Predict]:
    from core_model.model import DEFAULT_CHECKPOINT, CheckpointError, build_model
    from core_model.triage import Triage

    try:
        model = build_model(checkpoint or DEFAULT_CHECKPOINT)
    except CheckpointError as error:
        raise EvalInputError(str(error)) from None
    triage = Triage(model, label_set=label_set_name)

    def predict(items: list[tuple[str, Path]]) -> dict[str, dict[str, float]]:
        out = {}
        for start in range(0, len(items), 8):
            chunk = items[start:start + 8]
            for (key, _), result in zip(chunk, triage.run([_pixels(p) for _, p in chunk])):
                out[key] = result.probabilities or {}
        return out

    return model.findings_card(label_set_name), predict


def _pixels(path: Path) -> np.ndarray:
    from core_model.errors import ImageReadError
    from core_model.io import load_image

    try:
        return load_image(path).pixels
    except ImageReadError as error:
        raise EvalInputError(str(error)) from None


def at_source_operating_point(card: FindingsCard, name: str, p: np.ndarray, y: np.ndarray) -> dict:
    """Sensitivity/specificity on this set at the source's own operating point (the suggestion rule)."""
    ev = card.evidence.get(name)
    status = ev.status if ev is not None else "not trained"
    keep = (y >= 0) & np.isfinite(p)
    if ev is None or ev.operating_point is None or not keep.any():
        return {"source_status": status, "source_operating_point": None, "suggested_images": 0}
    p, y = p[keep], y[keep]
    called = np.array([bool(card.suggested({name: float(v)})) for v in p])
    return {"source_status": status, "source_operating_point": ev.operating_point,
            "suggested_images": int(called.sum()),
            "sensitivity_at_source_op": float(called[y == 1].mean()) if (y == 1).any() else None,
            "specificity_at_source_op": float((~called[y == 0]).mean()) if (y == 0).any() else None}


def format_table(result: dict) -> str:
    s, src = result["summary"], result["source"]
    lines = [f"source {src['name']} ({src['kind']}): {src['origin']}",
             f"{result['images_evaluated']} images ({len(result['images_missing'])} not found, "
             f"{len(result['images_without_prediction'])} without prediction)"]
    if "macro_auroc" in s:
        lines.append(f"macro AUROC {s['macro_auroc']:.3f} [{s['macro_auroc_low']:.3f}–{s['macro_auroc_high']:.3f}] "
                     f"over {s['classes_with_positives']} classes with positives; ECE {s['ece']:.3f}; "
                     f"mean p {s['mean_probability']:.3f} vs prevalence {s['prevalence']:.3f}")
    lines.append(f"{'class':28} {'pos':>4} {'neg':>4}  {'AUROC [95% CI]':22} {'source says':14} {'src op':>7} "
                 f"{'sens':>5} {'spec':>5}")
    for name, c in result["classes"].items():
        auc = "—" if c["auroc"] is None else (f"{c['auroc']:.3f}" + (
            f" [{c['auroc_low']:.2f}–{c['auroc_high']:.2f}]" if c["auroc_low"] is not None else ""))
        op = c.get("source_operating_point")
        lines.append(f"{name:28} {c['n_pos']:>4} {c['n_neg']:>4}  {auc:22} {c['source_status']:14} "
                     f"{'—' if op is None else f'{op:.3f}':>7} {_rate(c.get('sensitivity_at_source_op')):>5} "
                     f"{_rate(c.get('specificity_at_source_op')):>5}")
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


__all__ = ["main", "run", "build_parser", "EvalInputError"]
