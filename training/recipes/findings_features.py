"""Step 1–2 of the v5 findings recipe: write the patient split, then cache the encoder's pooled stage features of
every labelled NIH image (original + horizontal flip), resumable.

    nice -n 10 python training/recipes/findings_features.py --threads 2 [--flips 0,1] [--split-only]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("training.recipes")
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    from core_model.model import build_model
    from training.findings_data import FeatureCache, all_samples, fill_cache, make_split, write_split

    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--flips", default="0", help="comma list: 0 = original view, 1 = horizontal flip")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "findings_features"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-only", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    full, small = all_samples()
    split = make_split(full, small, seed=args.seed)
    write_split(split, ROOT / "assets" / "model")
    log.info("split: %s", {k: len(v) for k, v in split.items() if isinstance(v, list)} | split["patients"])
    if args.split_only:
        return 0
    model = build_model()
    cache = FeatureCache(args.cache, model.encoder_version)
    order = {k: i for i, k in enumerate(split["validation"] + split["train"] + split["demo"])}
    samples = sorted(full + small, key=lambda s: order[s.key])
    for flip in (bool(int(f)) for f in args.flips.split(",")):
        fill_cache(model.image_encoder, samples, cache, flips=(flip,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
