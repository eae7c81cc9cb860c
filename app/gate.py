"""The promotion gate: a candidate checkpoint against the one in use, side by side, on the site's held-out corrections.

    heldout = export_heldout(store, work_dir)            # the site's held-out split (never trained on), as a manifest
    comparison = compare(candidate_path, current_path, heldout)
    verdict = auto_promote_rule(comparison, min_images=10)  # Verdict(ok, reasons)

Segmentation: the RITM click protocol of :func:`training.eval_clicks.evaluate` (20 clicks from the deepest error,
the box prompt) on every held-out answer of record with a 2-D mask, 95 % bootstrap intervals over images
(:func:`training.eval_clicks.bootstrap_intervals`). Findings (when both checkpoints have a trained CXR-LT classifier
and the held-out answers have positives and negatives of a class): :func:`core_model.findings.evaluate` on the
readers' labels of record (macro AUROC with its bootstrap interval).

The rule (:func:`auto_promote_rule`, one place): promote automatically only when at least ``min_images`` held-out
images were evaluated and **no metric is worse beyond its interval** — the candidate's figure is not on the worse side
of the in-use model's 95 % interval (below its low end for IoU and AUROC, above its high end for NoC@90), the interval
widened by a small tolerance (0.002 IoU/AUROC, 0.1 clicks) for the rounding noise of fp16 checkpoints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HIGHER = ("miou@1", "miou@5", "miou@20", "box_iou", "macro_auroc")
LOWER = ("noc@90",)
CLICK_METRICS = ("miou@1", "miou@5", "miou@20", "noc@90", "box_iou")


@dataclass(frozen=True)
class Verdict:
    """Whether the rule promotes, and why (one line per metric that decided)."""
    ok: bool
    reasons: list[str]


def export_heldout(store: Any, out: Path) -> Path:
    """The site's held-out answers of record as a manifest (2-D PNG masks); fixes the split when nobody did."""
    from annotations_db.export import export_training
    from annotations_db.site import fix_heldout_split

    fix_heldout_split(store)
    return export_training(store, out, formats=("png",), heldout=True)


def heldout_pairs(manifest: Path) -> tuple[list[tuple[Path, Path]], list[dict[str, Any]]]:
    """(image, mask) files of the held-out items with a 2-D mask, and those items."""
    items = [i for i in json.loads(Path(manifest).read_text())["items"] if i["mask"] and i["mask"].endswith(".png")]
    root = Path(manifest).parent
    return [(root / i["image"], root / i["mask"]) for i in items], items


def click_metrics(checkpoint: Path | str | None, pairs: list[tuple[Path, Path]], cache_dir: Path | None,
                  max_clicks: int = 20, bootstrap: int = 1000, device: str = "cpu") -> dict[str, Any]:
    """RITM figures of one checkpoint on ``pairs`` with their 95 % intervals: {metric: value, "intervals": {...}}."""
    from core_model.model import build_model
    from core_model.predictor import InteractivePredictor
    from training.eval_clicks import bootstrap_intervals, evaluate

    model = build_model(Path(checkpoint) if checkpoint else None, device=device)
    disk = Path(cache_dir) / model.encoder_version if cache_dir else None
    predictor = InteractivePredictor(model, device=device, disk_cache=disk)
    result = evaluate(predictor, pairs, max_clicks=max_clicks, refine_clicks=0, text=None, box=True)
    intervals = bootstrap_intervals(result["objects"], bootstrap, 0, max_clicks) if bootstrap else {}
    figures = {k: result.get(k) for k in CLICK_METRICS if result.get(k) is not None}
    return {**figures, "intervals": {k: intervals[k] for k in figures if k in intervals},
            "images": result["n_images"], "objects": result["n_objects"], "version": model.info.version}


def findings_metrics(checkpoint: Path | str | None, items: list[dict[str, Any]], root: Path,
                     device: str = "cpu") -> dict[str, Any]:
    """Macro AUROC (with interval) of the checkpoint's CXR-LT classifier on the held-out labels of record, or
    ``{"not_measured": why}``."""
    import torch

    from core_model.findings import evaluate
    from core_model.model import build_model
    from core_model.triage import Triage
    from training.data import load_pixels

    model = build_model(Path(checkpoint) if checkpoint else None, device=device)
    triage = Triage(model, device)
    if not triage.classifier_trained:
        return {"not_measured": "no trained findings classifier"}
    classes = list(model.classifiers[triage.label_set].classes)
    labels = np.array([[int(i["labels"].get(c, -1)) for c in classes] for i in items])
    if not ((labels == 1).any(axis=0) & (labels == 0).any(axis=0)).any():
        return {"not_measured": "no class has held-out positives and negatives"}
    with torch.inference_mode():
        results = triage.run([load_pixels(root / i["image"]) for i in items])
    probabilities = np.array([[float((r.probabilities or {}).get(c, 0.0)) for c in classes] for r in results])
    _, summary = evaluate(classes, probabilities, labels)
    return {"macro_auroc": summary.get("macro_auroc"),
            "intervals": {"macro_auroc": [summary.get("macro_auroc_low"), summary.get("macro_auroc_high")]},
            "images": summary["images"]}


def compare(candidate: Path | str, current: Path | str | None, heldout_manifest: Path, *,
            cache_dir: Path | None = None, max_clicks: int = 20, bootstrap: int = 1000,
            device: str = "cpu") -> dict[str, Any]:
    """The candidate and the in-use checkpoint side by side on the held-out split (JSON-ready), on ``device``."""
    pairs, items = heldout_pairs(heldout_manifest)
    out: dict[str, Any] = {"heldout_images": len(pairs), "device": device,
                           "protocol": {"max_clicks": max_clicks, "box": True, "bootstrap": bootstrap,
                                        "unit": "image"}}
    if not pairs:
        out["not_measured"] = "the held-out split has no answer of record with a 2-D mask yet"
        return out
    for side, path in (("candidate", candidate), ("current", current)):
        out[side] = {"segmentation": click_metrics(path, pairs, cache_dir, max_clicks, bootstrap, device),
                     "findings": findings_metrics(path, items, Path(heldout_manifest).parent, device)}
    return out


TOLERANCE = {"noc@90": 0.1}  # clicks; every other metric (IoU, AUROC): DEFAULT_TOLERANCE
DEFAULT_TOLERANCE = 0.002


def auto_promote_rule(comparison: dict[str, Any], min_images: int = 10) -> Verdict:
    """The auto-promotion rule of the module docstring (an interval is widened by :data:`TOLERANCE`, so that a few
    held-out images with a zero-width interval do not turn rounding noise — fp16 weights — into "worse")."""
    images = int(comparison.get("heldout_images", 0))
    if images < min_images:
        return Verdict(False, [f"{images} held-out image(s) evaluated, the rule needs {min_images}"])
    reasons, ok = [], True
    for part in ("segmentation", "findings"):
        candidate, current = comparison["candidate"][part], comparison["current"][part]
        for metric in (m for m in HIGHER + LOWER if m in current and m in candidate):
            low, high = current.get("intervals", {}).get(metric, [current[metric], current[metric]])
            margin = TOLERANCE.get(metric, DEFAULT_TOLERANCE)
            low, high = low - margin, high + margin
            value = candidate[metric]
            worse = value < low if metric in HIGHER else value > high
            ok = ok and not worse
            reasons.append(f"{metric}: {value:.4f} vs {current[metric]:.4f} (interval {low:.4f}–{high:.4f})"
                           + (" — worse beyond the interval" if worse else ""))
    return Verdict(ok, reasons)
