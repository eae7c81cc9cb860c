"""``python -m training.findings_train``: the v5 built-in findings classifier on top of a project checkpoint.

Steps (each resumable: the features are cached per image, the probe's state every ``--save-every`` epochs):

1. the patient split (``assets/model/findings_split.json``, :func:`training.findings_data.make_split`) is read;
2. the pooled encoder features of every train / validation image are computed once and cached (``--cache``);
3. a linear probe per class on the rich pooling of the image embedding (:class:`core_model.model.MultiLabelHead`
   kind 1) is trained on the train split, calibrated per class on validation (Platt) and carded
   (:func:`training.classify.train_findings`);
4. the checkpoint is written with every non-classifier tensor of ``--init`` unchanged (the segmentation pathway stays
   bit-identical) and the cards in its header (``ModelInfo.extra["findings"]``).

Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from training.data import DataError

log = logging.getLogger("training")
REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.findings_train", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="run name and checkpoint version (e.g. biascare_lite_v5)")
    p.add_argument("--init", required=True, help="the project checkpoint whose classifier heads are replaced")
    p.add_argument("--split", default=str(REPO / "assets" / "model" / "findings_split.json"))
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="folder holding the NIH data")
    p.add_argument("--cache", default=str(REPO / ".cache" / "findings_features"))
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--loss", default="bce", choices=("bce", "logit-adjusted", "asl"))
    p.add_argument("--weight-decay", type=float, default=1.0, help="L2 penalty on the probe weights")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--flips", action="store_true", help="add the training images' horizontal flips")
    p.add_argument("--blocks", default="mean,max,std,quad",
                   help="pooling blocks the probe reads (of mean, max, std, quad); the others get weight 0")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training images only (tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue the probe from RUNS/NAME/probe_state.pt")
    p.add_argument("--export", default=None, help="also copy the checkpoint here")
    return p


def origin_text(args, split: dict) -> str:
    return (f"{args.name}: linear probe per class on the pooled image embedding ({args.blocks.replace(',', ', ')}; "
            f"quad = quadrant means) "
            f"of the segmentation encoder, {args.loss} loss, L2 {args.weight_decay:g}, {args.epochs} full-batch "
            f"epochs{' with horizontal flips' if args.flips else ''}; trained on {len(split['train'])} NIH "
            f"ChestX-ray14 images ({split['patients']['train']} patients), calibrated (Platt, per class) and "
            f"evaluated on {len(split['validation'])} validation images of {split['patients']['validation']} other "
            f"patients; split {split['rule']}, seed {split['seed']}; labels NLP-mined (NIH), 15 of the CXR-LT classes")


def run(args) -> dict:
    import torch

    from core_model.model import build_model
    from training.classify import train_findings
    from training.findings_data import FeatureCache, all_samples, fill_cache

    torch.set_num_threads(args.threads)
    run_dir = Path(args.runs_dir) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    split = json.loads(Path(args.split).read_text())
    if args.max_train:
        split = dict(split, train=split["train"][: args.max_train])
    full, small = all_samples(args.shared)
    model = build_model(args.init)
    base_info = model.info
    cache = FeatureCache(args.cache, model.encoder_version)
    wanted = set(split["train"]) | set(split["validation"])
    fill_cache(model.image_encoder, [s for s in full + small if s.key in wanted], cache,
               flips=(False, True) if args.flips else (False,))
    if not args.resume:
        (run_dir / "probe_state.pt").unlink(missing_ok=True)
    results = train_findings(model, split, full + small, cache, args.name, origin_text(args, split), loss=args.loss,
                             weight_decay=args.weight_decay, epochs=args.epochs, lr=args.lr, flips=args.flips,
                             run_dir=str(run_dir), blocks=tuple(args.blocks.split(",")))
    info = model.info
    info.version = args.name
    info.extra.update({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "findings_base": base_info.version,
                       "findings_config": {k: getattr(args, k) for k in ("loss", "weight_decay", "epochs", "lr",
                                                                          "flips", "blocks", "max_train")}})
    stored = tuple(sorted({".".join(k.split(".")[:3]) + "." for k in _init_keys(args.init)
                           if k.startswith("image_encoder.")})) or False
    checkpoint = model.save_checkpoint(run_dir / "checkpoint.safetensors", info, include_encoder=stored)
    results.update({"checkpoint": str(checkpoint), "checkpoint_mb": checkpoint.stat().st_size / 2**20,
                    "seconds": time.time() - started, "command": " ".join(sys.argv)})
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=str))
    if args.export:
        import shutil

        shutil.copyfile(checkpoint, args.export)
    log.info("done in %.0fs: %s (%.1f MB)", results["seconds"], checkpoint, results["checkpoint_mb"])
    return results


def _init_keys(path: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except DataError as exc:
        print(f"findings_train: bad input: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
