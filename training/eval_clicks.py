"""``python launch.py eval-clicks``: interactive segmentation with the RITM click protocol, as JSON.

Protocol (Xu et al. / RITM, Sofiiuk et al. 2022), run through :class:`core_model.predictor.InteractivePredictor`
exactly as the app runs the model:

* objects = connected components of each mask (components smaller than ``--min-object-fraction`` of the image are
  ignored and counted);
* click 1 at the deepest point of the object (distance transform, image border = boundary); each next click at the
  deepest point of the larger error region — a miss (FN) gives a positive click, a false positive (FP) a negative
  one; "larger" = larger maximal depth (RITM's released code; ``--rule area`` compares pixel counts); clicks
  accumulate and the previous low-res logits are fed back (the predictor's session); always 20 clicks (no early stop,
  RITM's IoU-analysis mode) so that mIoU@20 and the per-click curve exist;
* clicks are computed on the original image grid (``--click-grid model`` computes them on the 256 model grid and
  maps them back); IoU is reported on both grids: ``original`` (the predictor's mask vs the original mask) and
  ``model`` (low-res logits > 0 vs the area-resampled mask > 0.5, padding excluded);
* NoC@85 / NoC@90: clicks needed to reach the IoU (20 when never reached; ``*_failed`` counts those);
  mIoU@{1,3,5,10,20}; ``max_drop``: the largest decrease of the mean IoU from one click to the next;
* box: the object's bounding box alone, then ``--refine-clicks`` corrective clicks; text (when the checkpoint's
  language pathway is trained): "left lung"/"right lung" for each component (patient's left = image right) and
  ``--text`` ("lungs") for the whole mask, then corrective clicks;
* uncertainty: for each prediction its score (``iou_gap`` = 1 − SAM's predicted IoU; ``ranking`` = the predictor's
  worklist score; ``u_sl`` for text prompts) against the real IoU: AUROC of flagging IoU < 0.9 and
  Spearman(score, 1 − IoU), over the first-click predictions, over all click predictions, and over all predictions;
* ``bootstrap``: 95 % percentile intervals of the headline figures (original grid) over ``--bootstrap`` resamples of
  the *images* (the unit that was split; its objects move together), seed ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.clicks import deepest_error_click

log = logging.getLogger("training.eval_clicks")

THRESHOLDS = (0.85, 0.9)
REPORT_AT = (1, 3, 5, 10, 20)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py eval-clicks", description="RITM click-protocol evaluation (JSON).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--masks", required=True, help="folder of masks (<image stem><mask suffix>)")
    p.add_argument("--mask-suffix", default="_lung.png")
    p.add_argument("--checkpoint", default=None,
                   help="project checkpoint (default: the shipped one); 'stock' = LiteMedSAM without it")
    p.add_argument("--json", required=True, help="output JSON path ('-' = stdout)")
    p.add_argument("--only", default=None, help="evaluate only these images: a run's split.json ('heldout') or a "
                                                "text file with one file name per line")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--refine-clicks", type=int, default=5, help="corrective clicks after the box / text prompt")
    p.add_argument("--rule", default="depth", choices=("depth", "area"), help="which error region is 'larger'")
    p.add_argument("--click-grid", default="original", choices=("original", "model"))
    p.add_argument("--min-object-fraction", type=float, default=0.002)
    p.add_argument("--text", default="lungs", help="text prompt for the whole mask")
    p.add_argument("--no-text", action="store_true")
    p.add_argument("--no-box", action="store_true")
    p.add_argument("--label", default=None, help="the objects' label, given with the box prompt (e.g. 'lungs'); a "
                                                 "label the checkpoint was not trained on gets the foundation decoder's "
                                                 "box answer")
    p.add_argument("--cache-dir", default=".cache/embeddings", help="embedding cache (shared with training)")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--bootstrap", type=int, default=5000, help="image resamples for the 95 %% intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default="cpu")
    return p


def _read_only(path: str) -> set[str]:
    text = Path(path).read_text()
    try:
        data = json.loads(text)
        names = data["heldout"] if isinstance(data, dict) else data
    except (json.JSONDecodeError, KeyError, TypeError):
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {Path(n).name for n in names}


def auroc(scores, flags) -> float | None:
    from core_model.findings import auroc as _auroc

    return _auroc(np.asarray(scores, float), np.asarray(flags, int))


def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


class ObjectEvaluator:
    """Runs the protocol on one image with a predictor; IoU on both grids."""

    def __init__(self, predictor, pixels: np.ndarray, rule: str, click_grid: str) -> None:
        self.predictor = predictor
        self.pixels = pixels
        self.rule = rule
        self.click_grid = click_grid
        predictor.set_image(pixels)
        self.geometry = predictor.geometry
        self.h, self.w = self.geometry.resized_shape

    def model_mask(self, mask: np.ndarray) -> np.ndarray:
        t = self.geometry.mask_to_model(torch.from_numpy(np.ascontiguousarray(mask))[None, None])[0, 0] > 0.5
        return t[: self.h, : self.w].numpy()

    @staticmethod
    def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
        union = np.logical_or(pred, gt).sum()
        return float(np.logical_and(pred, gt).sum() / union) if union else 1.0

    def score(self, prediction, gt: np.ndarray, gt_model: np.ndarray) -> dict:
        low = (prediction.low_res_logits[0, 0, : self.h, : self.w] > 0).cpu().numpy()
        u = prediction.uncertainty
        return {"iou": self._iou(prediction.mask, gt), "iou_model": self._iou(low, gt_model), "iou_gap": u.iou_gap,
                "ranking": u.ranking, "u_sl": u.u_sl}

    def next_click(self, prediction, gt: np.ndarray, gt_model: np.ndarray):
        from core_model.predictor import Click

        if self.click_grid == "model":
            pred = np.zeros_like(gt_model) if prediction is None else \
                (prediction.low_res_logits[0, 0, : self.h, : self.w] > 0).cpu().numpy()
            click = deepest_error_click(pred, gt_model, rule=self.rule)
            if click is None:
                return None
            x, y = self.geometry.to_original(np.array([click[0] + 0.5, click[1] + 0.5])) - 0.5
            return Click(float(x), float(y), bool(click[2]))
        pred = np.zeros_like(gt) if prediction is None else prediction.mask
        click = deepest_error_click(pred, gt, rule=self.rule)
        return None if click is None else Click(float(click[0]), float(click[1]), bool(click[2]))

    def run(self, gt: np.ndarray, max_clicks: int, box=None, text: str | None = None,
            label: str | None = None) -> list[dict]:
        """Scores after the start prompt (box/text, if any; ``label``: the object's, as the predictor takes it) and
        after each click."""
        gt_model = self.model_mask(gt)
        self.predictor.reset()
        steps = []
        prediction = None
        if box is not None or text:
            prediction = self.predictor.predict(box=box, text=text, label=label)
            steps.append(self.score(prediction, gt, gt_model))
        for _ in range(max_clicks):
            click = self.next_click(prediction, gt, gt_model)
            if click is None:  # already exact: nothing to correct
                steps.append(dict(steps[-1]))
                continue
            prediction = self.predictor.predict(clicks=[click])
            steps.append(self.score(prediction, gt, gt_model))
        return steps


def _noc(curve: list[float], threshold: float, max_clicks: int) -> tuple[int, bool]:
    for k, value in enumerate(curve, start=1):
        if value >= threshold:
            return k, True
    return max_clicks, False


def _uncertainty_block(records: list[dict]) -> dict:
    out: dict = {"n": len(records), "flagged_iou_below_0.9": int(sum(r["iou"] < 0.9 for r in records))}
    for key in ("iou_gap", "ranking", "u_sl"):
        rows = [r for r in records if r.get(key) is not None]
        if not rows:
            continue
        scores = [r[key] for r in rows]
        out[key] = {"auroc_iou_below_0.9": auroc(scores, [int(r["iou"] < 0.9) for r in rows]),
                    "spearman_vs_1_minus_iou": spearman(scores, [1 - r["iou"] for r in rows]), "n": len(rows)}
    return out


def objects_by_image(objects: list[dict]) -> list[list[dict]]:
    """The objects (``result["objects"]``) grouped by image, images sorted by name: the bootstrap's units."""
    images = sorted({o["image"] for o in objects})
    return [[o for o in objects if o["image"] == name] for name in images]


def image_resample_figures(groups: list[list[dict]], rng: np.random.Generator, max_clicks: int = 20) -> dict[str, float]:
    """One bootstrap replicate: draw the images (``groups``: :func:`objects_by_image`) with replacement, take all
    objects of each drawn image, and compute mIoU@k, NoC@85/90, box and side-text IoU on the draw."""
    drawn = [o for i in rng.integers(0, len(groups), len(groups)) for o in groups[i]]
    ious = np.array([o["ious"] for o in drawn])
    figures = {f"miou@{k}": float(ious[:, k - 1].mean()) for k in REPORT_AT if k <= ious.shape[1]}
    for thr in THRESHOLDS:
        figures[f"noc@{int(thr * 100)}"] = float(np.mean([_noc(list(r), thr, max_clicks)[0] for r in ious]))
    for key in ("box_iou", "text_iou"):
        values = [o[key] for o in drawn if o.get(key) is not None]
        if values:
            figures[key] = float(np.mean(values))
    return figures


def bootstrap_replicates(objects: list[dict], n_boot: int = 5000, seed: int = 0,
                         max_clicks: int = 20) -> dict[str, list[float]]:
    """``n_boot`` replicates of :func:`image_resample_figures` (figure -> its values, in replicate order). The same
    seed on the same images draws the same resamples, so two models' replicates are paired."""
    rng = np.random.default_rng(seed)
    groups = objects_by_image(objects)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        for key, value in image_resample_figures(groups, rng, max_clicks).items():
            samples.setdefault(key, []).append(value)
    return samples


def percentile_intervals(samples: dict[str, list[float]]) -> dict[str, list[float]]:
    """95 % percentile interval of each figure's replicates."""
    return {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in samples.items()}


def bootstrap_intervals(objects: list[dict], n_boot: int = 5000, seed: int = 0,
                        max_clicks: int = 20) -> dict[str, list[float]]:
    """95 % percentile intervals of mIoU@k, NoC@85/90, box and side-text IoU over image resamples: each replicate
    draws the images with replacement and takes all objects of each drawn image (``objects``: ``result["objects"]``)."""
    return percentile_intervals(bootstrap_replicates(objects, n_boot, seed, max_clicks))


def evaluate(predictor, pairs: list[tuple[Path, Path]], max_clicks: int = 20, refine_clicks: int = 5,
             rule: str = "depth", click_grid: str = "original", min_object_fraction: float = 0.002,
             text: str | None = "lungs", box: bool = True,
             mask_loader: Callable[[Path, tuple[int, int]], np.ndarray] | None = None,
             label: str | None = None) -> dict:
    """The protocol over (image, mask) pairs; returns the JSON-ready result. ``mask_loader(mask_path, image_shape)``
    gives the bool mask (default: any value > 0, :func:`training.data.load_binary_mask`); ``label``: the objects'
    label, given with the box prompt (which decoder answers a box: ``BiasCareModel.answers_boxes_for``)."""
    from scipy import ndimage

    from training.cache import SIDE_PHRASES
    from training.data import load_binary_mask, load_pixels

    use_text = bool(text) and predictor.model.language.trained
    mask_loader = mask_loader or load_binary_mask
    objects, skipped_small, whole_text = [], 0, []
    t0 = time.perf_counter()
    for image_path, mask_path in pairs:
        pixels = load_pixels(image_path)
        mask = mask_loader(mask_path, pixels.shape)
        runner = ObjectEvaluator(predictor, pixels, rule, click_grid)
        labels, count = ndimage.label(mask)
        min_pixels = max(1, int(min_object_fraction * mask.size))
        for index in range(1, count + 1):
            component = labels == index
            if component.sum() < min_pixels:
                skipped_small += 1
                continue
            ys, xs = np.nonzero(component)
            record = {"image": image_path.name, "component": index, "pixels": int(component.sum()),
                      "clicks": runner.run(component, max_clicks)}
            if box:
                record["box"] = runner.run(component, refine_clicks, label=label,
                                           box=(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
            if use_text:
                side = "left" if xs.mean() + 0.5 > mask.shape[1] / 2 else "right"
                record["text_prompt"] = SIDE_PHRASES[side][0]
                record["text"] = runner.run(component, refine_clicks, text=SIDE_PHRASES[side][0])
            objects.append(record)
        if use_text:
            whole_text.append({"image": image_path.name, **runner.run(mask, 0, text=text)[0]})
    seconds = time.perf_counter() - t0
    if not objects:
        raise ValueError("no object to evaluate (empty masks?)")

    result: dict = {"n_images": len(pairs), "n_objects": len(objects), "objects_skipped_small": skipped_small,
                    "max_clicks": max_clicks, "seconds": seconds, "grids": {}, "curves": {}}
    for grid, key in (("original", "iou"), ("model", "iou_model")):
        ious = np.array([[s[key] for s in o["clicks"]] for o in objects])  # (objects, clicks)
        curve = ious.mean(0)
        block = {f"miou@{k}": float(curve[k - 1]) for k in REPORT_AT if k <= max_clicks}
        for thr in THRESHOLDS:
            nocs = [_noc(list(row), thr, max_clicks) for row in ious]
            block[f"noc@{int(thr * 100)}"] = float(np.mean([n for n, _ in nocs]))
            block[f"noc@{int(thr * 100)}_failed"] = int(sum(not ok for _, ok in nocs))
        drops = np.diff(curve)
        block["max_drop"] = float(max(0.0, -drops.min())) if drops.size else 0.0
        block["per_object_max_drop"] = float(max(0.0, -np.diff(ious, axis=1).min())) if ious.shape[1] > 1 else 0.0
        block["clicks_never_hurt"] = bool(block["max_drop"] <= 0.01 and curve[-1] >= curve[min(4, len(curve) - 1)])
        if box:
            box_ious = np.array([[s[key] for s in o["box"]] for o in objects])
            block["box_iou"] = float(box_ious[:, 0].mean())
            block["box_then_clicks"] = [float(v) for v in box_ious.mean(0)]
        if use_text:
            text_ious = np.array([[s[key] for s in o["text"]] for o in objects])
            block["text_side_iou"] = float(text_ious[:, 0].mean())
            block["text_side_then_clicks"] = [float(v) for v in text_ious.mean(0)]
            block["text_whole_iou"] = float(np.mean([w[key] for w in whole_text]))
            block["text_whole_prompt"] = text
        else:
            block["text_side_iou"] = block["text_whole_iou"] = None
        result["grids"][grid] = block
        result["curves"][grid] = [float(v) for v in curve]
    for k in REPORT_AT:  # the headline figures on the original grid, flat
        if k <= max_clicks:
            result[f"miou@{k}"] = result["grids"]["original"][f"miou@{k}"]
    for thr in THRESHOLDS:
        result[f"noc@{int(thr * 100)}"] = result["grids"]["original"][f"noc@{int(thr * 100)}"]
    for key in ("box_iou", "text_whole_iou", "text_side_iou", "max_drop", "clicks_never_hurt"):
        result[key] = result["grids"]["original"].get(key)
    first = [o["clicks"][0] for o in objects]
    all_clicks = [s for o in objects for s in o["clicks"]]
    everything = all_clicks + [s for o in objects for s in o.get("box", []) + o.get("text", [])] + whole_text
    result["uncertainty"] = {"first_click": _uncertainty_block(first), "all_clicks": _uncertainty_block(all_clicks),
                             "all_predictions": _uncertainty_block(everything)}
    result["uncertainty_auroc"] = result["uncertainty"]["all_predictions"].get("iou_gap", {}).get("auroc_iou_below_0.9")
    result["objects"] = [{"image": o["image"], "component": o["component"], "pixels": o["pixels"],
                          "ious": [round(s["iou"], 4) for s in o["clicks"]],
                          "ious_model": [round(s["iou_model"], 4) for s in o["clicks"]],
                          "box_iou": round(o["box"][0]["iou"], 4) if box else None,
                          "text_iou": round(o["text"][0]["iou"], 4) if use_text else None} for o in objects]
    return result


def find_pairs(images: Path, masks: Path, mask_suffix: str,
               only: set[str] | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, mask) pairs of ``images/*`` with ``masks/<stem><mask_suffix>`` (sorted by name; ``only``: these file
    names only), and the names of the images without a mask."""
    from training.data import IMAGE_SUFFIXES

    pairs, missing = [], []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if only is not None and image.name not in only:
            continue
        mask = masks / f"{image.stem}{mask_suffix}"
        if mask.is_file():
            pairs.append((image, mask))
        else:
            missing.append(image.name)
    return pairs, missing


def load_predictor(checkpoint_arg: str | None, device: str = "cpu", cache_dir: str | None = ".cache/embeddings"):
    """(InteractivePredictor, checkpoint path or None): ``checkpoint_arg`` None = the shipped checkpoint, 'stock' =
    LiteMedSAM without it; embeddings cached under ``cache_dir/<encoder version>``. Raises CheckpointError."""
    from core_model.model import DEFAULT_CHECKPOINT, build_model
    from core_model.predictor import InteractivePredictor

    checkpoint = None if checkpoint_arg == "stock" else (Path(checkpoint_arg) if checkpoint_arg else DEFAULT_CHECKPOINT)
    model = build_model(checkpoint, device=device)
    cache = Path(cache_dir) / model.encoder_version if cache_dir else None
    return InteractivePredictor(model, device=device, disk_cache=cache), checkpoint


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    images, masks = Path(args.images), Path(args.masks)
    for folder in (images, masks):
        if not folder.is_dir():
            print(f"eval-clicks: {folder}: folder not found", file=sys.stderr)
            return 2
    only = _read_only(args.only) if args.only else None
    pairs, missing = find_pairs(images, masks, args.mask_suffix, only)
    if args.limit:
        pairs = pairs[: args.limit]
    if not pairs:
        print(f"eval-clicks: no image in {images} has a mask {args.mask_suffix!r}" +
              (f" among --only ({len(only)} names)" if only is not None else ""), file=sys.stderr)
        return 2
    try:
        predictor, checkpoint = load_predictor(args.checkpoint, args.device, args.cache_dir)
    except Exception as exc:  # CheckpointError names the file
        print(f"eval-clicks: {exc}", file=sys.stderr)
        return 2
    model = predictor.model
    result = evaluate(predictor, pairs, args.max_clicks, args.refine_clicks, args.rule, args.click_grid,
                      args.min_object_fraction, None if args.no_text else args.text, not args.no_box,
                      label=args.label)
    result["checkpoint"] = "stock" if checkpoint is None or not Path(checkpoint).is_file() else str(checkpoint)
    result["model_version"] = model.info.version
    result["images_without_mask"] = missing
    if args.bootstrap:
        result["bootstrap"] = {"n": args.bootstrap, "seed": args.seed, "unit": "image", "level": 0.95,
                               "intervals": bootstrap_intervals(result["objects"], args.bootstrap, args.seed,
                                                                args.max_clicks)}
    result["protocol"] = {"rule": args.rule, "click_grid": args.click_grid, "max_clicks": args.max_clicks,
                          "refine_clicks": args.refine_clicks, "min_object_fraction": args.min_object_fraction}
    text = json.dumps(result, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
        g = result["grids"]["original"]
        print(f"eval-clicks: {result['n_objects']} objects on {result['n_images']} images → NoC@90 {g['noc@90']:.2f}, "
              f"mIoU@5 {g.get('miou@5', float('nan')):.3f}, mIoU@20 {g.get('miou@20', float('nan')):.3f}, "
              f"box {g.get('box_iou')}, text {g.get('text_whole_iou')}; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
