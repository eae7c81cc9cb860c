"""``python launch.py predict``: segment one image from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core_model.errors import ImageReadError
from core_model.model import DEFAULT_CHECKPOINT, CheckpointError


def _click(text: str) -> tuple[float, float, bool]:
    try:
        x, y, sign = text.split(",")
        if sign not in ("+", "-"):
            raise ValueError
        return float(x), float(y), sign == "+"
    except ValueError:
        raise argparse.ArgumentTypeError(f"click must be X,Y,+ or X,Y,- (original pixels), got {text!r}") from None


def _box(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box must be X0,Y0,X1,Y1 (original pixels), got {text!r}")
    return values


def predict_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py predict", description=__doc__)
    parser.add_argument("image", type=Path, help="PNG/JPEG/DICOM image or NIfTI volume (middle axial slice)")
    parser.add_argument("--click", type=_click, action="append", default=[], help="X,Y,+ or X,Y,- ; repeatable")
    parser.add_argument("--box", type=_box, help="X0,Y0,X1,Y1 in original pixels")
    parser.add_argument("--text", help="text prompt, e.g. 'left lung' (needs a trained language pathway)")
    parser.add_argument("--label", help="the object's label, e.g. 'Kidney': a box alone of a label the checkpoint was "
                                        "not trained on is answered by the stock decoder")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, help="write the mask as a PNG (original geometry)")
    args = parser.parse_args(argv)

    from PIL import Image

    from core_model.io import load_image
    from core_model.model import build_model
    from core_model.predictor import InteractivePredictor

    try:
        image = load_image(args.image)
        predictor = InteractivePredictor(build_model(args.checkpoint))
    except (ImageReadError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor.set_image(image.pixels)
    if not (args.click or args.box or args.text):
        parser.error("give at least one --click, --box or --text")
    prediction = predictor.predict(args.click, box=args.box, text=args.text, with_tta=True, label=args.label)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(args.out)
    print(json.dumps({"model_version": predictor.model.info.version,
                      "decoder": "foundation" if prediction.foundation else "checkpoint",
                      "mask_pixels": int(prediction.mask.sum()),
                      "predicted_iou": prediction.iou, "uncertainty": prediction.uncertainty.as_dict(),
                      "mask": str(args.out) if args.out else None}))
    return 0
