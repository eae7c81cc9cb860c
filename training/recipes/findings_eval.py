"""Step 5 of the v5 findings recipe: evaluate a checkpoint's findings head on validation and (once) on the demo split;
writes the metrics JSON and the reliability / ROC figures.

    nice -n 10 python training/recipes/findings_eval.py --checkpoint assets/model/biascare_lite.safetensors \
        --json assets/model/eval_findings_v5.json --figures assets/model

Probabilities are the head's calibrated output (``MultiLabelHead.calibrate(logits_from_features(rich_pool(
embedding)))`` = ``BiasCareModel.classify``) computed from the cached pooled embedding features; the uncalibrated
ones are σ(logit). ECE of the validation split after calibration is in-sample (the Platt fit used those images):
``ece_crossfit`` refits Platt in 5 folds of the validation images and scores each fold with the other four's fit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def sens_spec(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float | None, float | None]:
    keep = y >= 0
    p, y = p[keep], y[keep]
    sens = float((p[y == 1] >= t).mean()) if (y == 1).any() else None
    spec = float((p[y == 0] < t).mean()) if (y == 0).any() else None
    return sens, spec


def crossfit_ece(logits: np.ndarray, labels: np.ndarray, cols: list[int], folds: int = 5, seed: int = 0) -> float:
    from core_model.findings import expected_calibration_error, fit_platt

    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(labels)) % folds
    out = np.zeros_like(logits)
    for f in range(folds):
        test, train = fold == f, fold != f
        for k in cols:
            keep = train & (labels[:, k] >= 0)
            a, b = fit_platt(logits[keep, k], labels[keep, k])
            out[test, k] = 1 / (1 + np.exp(-(a * logits[test, k] + b)))
    return float(expected_calibration_error(out[:, cols], labels[:, cols]))


def split_report(name: str, raw_logits: np.ndarray, probs: np.ndarray, labels: np.ndarray, card, classes) -> dict:
    from core_model.findings import evaluate, expected_calibration_error

    trained = [c for c, e in card.evidence.items() if e.status != "not trained"]
    evidence, summary = evaluate(classes, probs, labels, trained=trained)
    cols = [k for k, c in enumerate(classes) if evidence[c].auroc is not None]
    raw = 1 / (1 + np.exp(-raw_logits))
    summary["ece_uncalibrated"] = expected_calibration_error(raw[:, cols], labels[:, cols])
    summary["mean_probability_uncalibrated"] = float(raw[:, cols][labels[:, cols] >= 0].mean())
    per_class = {}
    for k, c in enumerate(classes):
        if c not in trained:
            continue
        e, stored = evidence[c], card.evidence[c]
        row = {"auroc": e.auroc, "auroc_low": e.auroc_low, "auroc_high": e.auroc_high, "n_pos": e.n_pos,
               "n_neg": e.n_neg, "status_on_this_split": e.status, "card_status": stored.status,
               "mean_probability": float(probs[labels[:, k] >= 0, k].mean()),
               "prevalence": float((labels[:, k] == 1).sum() / max(1, (labels[:, k] >= 0).sum())),
               "operating_point": stored.operating_point}
        if stored.operating_point is not None:
            row["sensitivity"], row["specificity"] = sens_spec(probs[:, k], labels[:, k], stored.operating_point)
        per_class[c] = row
    return {"split": name, "summary": summary, "per_class": per_class}


def figures(reports: dict, curves: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    written = []
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for label, (p, y) in curves["reliability"].items():
        p, y = p[y >= 0], y[y >= 0]
        bins = np.minimum((p * 10).astype(int), 9)
        xs = [p[bins == b].mean() for b in range(10) if (bins == b).sum() >= 5]
        ys = [y[bins == b].mean() for b in range(10) if (bins == b).sum() >= 5]
        ax.plot(xs, ys, "o-", label=label)
    ax.set(xlabel="mean predicted probability (bin, ≥ 5 pairs)", ylabel="observed positive rate",
           title="Reliability, 15 NIH classes pooled", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "findings_reliability.png", dpi=110)
    written.append(str(out / "findings_reliability.png"))
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
    for ax, (split, (p, y, classes)) in zip(axes, curves["roc"].items()):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for k, c in enumerate(classes):
            keep = y[:, k] >= 0
            if (y[keep, k] == 1).sum() == 0 or (y[keep, k] == 0).sum() == 0:
                continue
            fpr, tpr, _ = roc_curve(y[keep, k], p[keep, k])
            a = reports[split]["per_class"][c]["auroc"]
            ax.plot(fpr, tpr, lw=1, label=f"{c} {a:.2f} (n+ {int((y[keep, k] == 1).sum())})")
        s = reports[split]["summary"]
        ax.set(xlabel="1 − specificity", ylabel="sensitivity",
               title=f"{split}: macro AUROC {s['macro_auroc']:.3f} ({s['macro_auroc_low']:.3f}–{s['macro_auroc_high']:.3f})")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "findings_roc.png", dpi=110)
    written.append(str(out / "findings_roc.png"))
    plt.close(fig)
    return written


def main() -> int:
    import torch

    from core_model.model import build_model
    from training.classify import split_samples
    from training.findings_data import FeatureCache, all_samples, label_matrix, load_features

    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(ROOT / "assets" / "model" / "biascare_lite.safetensors"))
    p.add_argument("--label-set", default="cxr-lt-26")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "findings_features"))
    p.add_argument("--json", required=True)
    p.add_argument("--figures", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.checkpoint)
    head, card = model.classifiers[args.label_set], model.findings_card(args.label_set)
    classes = head.classes
    split = json.loads((ROOT / "assets" / "model" / "findings_split.json").read_text())
    full, small = all_samples()
    parts = split_samples(split, full + small)
    cache = FeatureCache(args.cache, model.encoder_version)
    reports, rel, roc = {}, {}, {}
    for name in ("validation", "demo"):
        x = load_features(parts[name], cache, ("neck",))
        y = label_matrix(parts[name], classes)
        with torch.no_grad():
            logits = head.logits_from_features(x)
            probs = head.calibrate(logits).numpy()
        reports[name] = split_report(name, logits.numpy(), probs, y, card, classes)
        cols = [k for k, c in enumerate(classes) if c in reports[name]["per_class"]]
        if name == "validation":
            reports[name]["summary"]["ece_crossfit"] = crossfit_ece(logits.numpy(), y, cols)
            rel["validation, uncalibrated"] = (1 / (1 + np.exp(-logits.numpy()[:, cols])).ravel(), y[:, cols].ravel())
        rel[f"{name}, calibrated"] = (probs[:, cols].ravel(), y[:, cols].ravel())
        roc[name] = (probs[:, cols], y[:, cols], [classes[k] for k in cols])
    out = {"checkpoint": args.checkpoint, "version": model.info.version, "label_set": args.label_set,
           "encoder_version": model.encoder_version, "card_validation": card.validation,
           "validation": reports["validation"], "demo": reports["demo"],
           "note": "demo evaluated once, after every choice was made on validation"}
    if args.figures:
        out["figures"] = figures(reports, {"reliability": rel, "roc": roc}, Path(args.figures))
    Path(args.json).write_text(json.dumps(out, indent=1))
    for name in ("validation", "demo"):
        s = reports[name]["summary"]
        print(f"{name}: macro AUROC {s['macro_auroc']:.3f} ({s['macro_auroc_low']:.3f}–{s['macro_auroc_high']:.3f}), "
              f"ECE {s['ece_uncalibrated']:.3f} → {s['ece']:.3f}, mean p {s['mean_probability']:.3f} vs prevalence "
              f"{s['prevalence']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
