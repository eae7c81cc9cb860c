"""Step 3 of the v5 findings recipe: choose the probe's settings on the **validation** split only (macro AUROC of the
15 NIH classes; the demo split is never read here). Needs the feature cache of step 1–2.

    nice -n 10 python training/recipes/findings_experiments.py --threads 1 --out runs/findings_v5/experiments.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("training.recipes")
sys.path.insert(0, str(ROOT))

FEATURE_SETS = {"neck": ("neck",), "neck+stage4": ("neck", "stage4"),
                "all stages": ("stage1", "stage2", "stage3", "stage4", "neck")}
# subsets of the neck's pooling blocks (MultiLabelHead.rich_pool): the only ones the shipped head can read
BLOCK_SETS = {"mean,max,std,quad": ("mean", "max", "std", "quad"), "mean,quad": ("mean", "quad"),
              "mean,std,quad": ("mean", "std", "quad"), "mean": ("mean",)}


def main() -> int:
    import numpy as np
    import torch

    from core_model.classes import NIH14_TO_CXRLT
    from core_model.findings import auroc
    from core_model.model import build_model
    from training.classify import block_columns, prior_logits, probe_inputs, split_samples, standardiser, train_probe
    from training.findings_data import FeatureCache, all_samples

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(ROOT / ".cache" / "findings_features"))
    p.add_argument("--out", default=str(ROOT / "runs" / "findings_v5" / "experiments.json"))
    p.add_argument("--flips", action="store_true", help="also try the flipped training views (needs them cached)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--available-only", action="store_true",
                   help="train on the training images already cached (a preliminary look while step 1 runs)")
    p.add_argument("--weight-decays", default="1e-3,1e-2,1e-1,1,10")
    p.add_argument("--losses", default="bce,logit-adjusted,asl")
    p.add_argument("--feature-sets", default=",".join(FEATURE_SETS))
    p.add_argument("--block-sets", default=None, help="';'-separated neck block sets, e.g. 'mean,quad;mean' "
                   "(default: all of BLOCK_SETS, with the neck features only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    full, small = all_samples()
    split = json.loads((ROOT / "assets" / "model" / "findings_split.json").read_text())
    parts = split_samples(split, full + small)
    del parts["demo"]  # never looked at while choosing
    cache = FeatureCache(args.cache, build_model().encoder_version)
    if args.available_only:
        parts["train"] = [s for s in parts["train"] if cache.path(s.key, False).is_file()]
        log.info("preliminary: %d training images cached", len(parts["train"]))
    classes = tuple(NIH14_TO_CXRLT.values())
    prior = prior_logits(classes)
    rows = []
    sets = {k: FEATURE_SETS[k] for k in args.feature_sets.split(",")}
    grid = list(itertools.product(args.losses.split(","), (float(w) for w in args.weight_decays.split(","))))
    runs = [(fname, stages, flips, None) for (fname, stages), flips
            in itertools.product(sets.items(), (False, True) if args.flips else (False,))]
    block_sets = [tuple(b.split(",")) for b in args.block_sets.split(";")] if args.block_sets else list(BLOCK_SETS.values())
    runs += [("neck[" + ",".join(b) + "]", ("neck",), False, b) for b in block_sets]
    for fname, stages, flips, blocks in runs:
        data = probe_inputs(parts, cache, classes, flips, stages)
        mean, scale = standardiser(data["x_train"])
        x_train, x_val = (data["x_train"] - mean) / scale, (data["x_val"] - mean) / scale
        if blocks:
            x_train, x_val = x_train[:, block_columns(blocks)], x_val[:, block_columns(blocks)]
        for loss, wd in grid:
            t0 = time.perf_counter()
            weight, bias, _ = train_probe(x_train, torch.from_numpy(data["y_train"]), prior, loss, wd, args.epochs)
            logits = (x_val @ weight.T + bias).numpy()
            aucs = [auroc(logits[:, k], data["y_val"][:, k]) for k in range(len(classes))]
            row = {"n_train": len(parts["train"]), "features": fname, "blocks": list(blocks) if blocks else None, "flips": flips, "loss": loss, "weight_decay": wd,
                   "macro_auroc": float(np.mean([a for a in aucs if a is not None])),
                   "per_class": dict(zip(classes, aucs)), "seconds": time.perf_counter() - t0}
            rows.append(row)
            log.info("%-12s flips=%d %-15s wd=%-6g val macro AUROC %.3f (%.1fs)", fname, flips, loss, wd,
                         row["macro_auroc"], row["seconds"])
    best = max(rows, key=lambda r: r["macro_auroc"])
    shippable = max((r for r in rows if r["blocks"]), key=lambda r: r["macro_auroc"], default=None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "best": best, "best_shippable": shippable}, indent=1))
    keys = ("features", "flips", "loss", "weight_decay", "macro_auroc")
    log.info("best: %s", {k: best[k] for k in keys})
    if shippable:
        log.info("best on the embedding's pooling (shippable): %s", {k: shippable[k] for k in keys})
    return 0


if __name__ == "__main__":
    sys.exit(main())
