"""Box-prompt latency: a box alone, on real 2000×2000 CXRs, through the decoder its object's label calls for.

Compares, in one process on the same embeddings and boxes (the mask at the display size the viewer needs):
  * ``checkpoint``: a box of a label the shipped checkpoint was trained on (or an unlabelled one): its own decoder
    through ONNX Runtime, the click path's graph;
  * ``foundation``: a box of any other label ("Heart / cardiomediastinum"): the stock LiteMedSAM prompt encoder and
    decoder in PyTorch on the same embedding (:meth:`core_model.model.BiasCareModel.foundation_decoder`);
  * ``stock_model``: the baseline, the stock model's box through the same predictor (PyTorch decoder);
and the one-off cost of the first foundation box of a process (the stock decoder loaded from the package).

    python -m bench.box_latency --json bench/out/box_latency.json [--boxes 30]
"""
from __future__ import annotations

import time

import numpy as np
import torch

from app.render import DisplayGeometry
from bench.common import cxr_images, device_description, emit, parser, percentiles_ms, time_calls
from core_model.model import build_model
from core_model.predictor import InteractivePredictor
from training.data_engine import EngineConfig, random_boxes

FOUNDATION_LABEL = "Heart / cardiomediastinum"


def box_fn(predictor: InteractivePredictor, boxes: list, label: str | None, mask_shape: tuple[int, int]):
    state = {"i": 0}

    def run() -> np.ndarray:
        predictor.reset()
        box = boxes[state["i"] % len(boxes)]
        state["i"] += 1
        return predictor.predict(box=box, label=label).mask_at(mask_shape)

    return run


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--boxes", type=int, default=30, help="timed boxes per image and variant")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = build_model()
    started = time.perf_counter()
    shipped.foundation_decoder()
    first_load_ms = (time.perf_counter() - started) * 1000
    ours = InteractivePredictor(shipped)
    stock = InteractivePredictor(build_model(None), decoder_backend="torch", encoder_backend="onnx")
    times: dict[str, list[float]] = {"checkpoint": [], "foundation": [], "stock_model": []}
    for index, (_, image) in enumerate(cxr_images(args.images, min_side=2000)):
        g = DisplayGeometry.for_shape(*image.shape[:2])
        shape = (g.disp_height, g.disp_width)
        boxes = [tuple(map(float, b)) for b in  # the data engine's random boxes, on the original grid
                 random_boxes(image.shape[:2], EngineConfig(boxes=args.boxes), np.random.default_rng(index))]
        ours.set_image(image)
        stock.set_image(image)
        times["checkpoint"] += time_calls(box_fn(ours, boxes, None, shape), args.boxes)
        times["foundation"] += time_calls(box_fn(ours, boxes, FOUNDATION_LABEL, shape), args.boxes)
        times["stock_model"] += time_calls(box_fn(stock, boxes, None, shape), args.boxes)
    result = {"benchmark": "box_latency", "device": device_description(), "checkpoint": shipped.info.version,
              "foundation_label": FOUNDATION_LABEL, "first_foundation_load_ms": round(first_load_ms, 1),
              "variants": {name: percentiles_ms(values) for name, values in times.items()}}
    result["foundation_p50_over_stock_model"] = round(result["variants"]["foundation"]["p50_ms"]
                                                      / result["variants"]["stock_model"]["p50_ms"], 2)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
