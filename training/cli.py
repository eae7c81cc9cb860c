"""``python launch.py train …``: segmentation (clicks / box / text) and classification training.

Examples::

    # the shipped checkpoint (CPU, decoder-only on cached embeddings), see assets/model/MODEL_CARD.md
    python launch.py train --name biascare_lite --folder ../shared/data/cxr_lungs --holdout 0.2 \\
        --nifti ../shared/data/ct_nifti/example_ct.nii.gz:../shared/data/ct_nifti/example_ct_lung_mask.nii.gz \\
        --cls-csv ../shared/data/nih_cxr14_sample/labels_cxrlt2024_format.csv --task seg,cls ...

    # multi-GPU / multi-node
    torchrun --nproc_per_node 8 launch.py train --name big --folder DATA --device cuda --lora ...

Exit codes: 0 done, 2 bad arguments or unusable data (the message names the file and cause), 3 training failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from training.data import DataError, SkipLog
from training.losses import LossConfig
from training.trainer import MODES, TrainConfig, TrainingError

log = logging.getLogger("training")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--name", required=True, help="run name: outputs go to RUNS_DIR/NAME/")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--task", default="seg", help="comma list of: seg, cls")
    d = p.add_argument_group("data")
    d.add_argument("--folder", action="append", default=[], help="DIR with images/ and masks/ (repeatable)")
    d.add_argument("--mask-suffix", default="_lung.png", help="mask file = <image stem><suffix> in masks/")
    d.add_argument("--group-column", default="patientid", help="patient column of DIR/metadata.csv (for the split)")
    d.add_argument("--manifest", action="append", default=[], help="exported training manifest JSON/JSONL (repeatable)")
    d.add_argument("--manifest-split", default="train",
                   help="train on manifest items of this split (and without a split; names as in annotations_db.manifest: Train/training = train); validation items validate, test items are left out, heldout is refused")
    d.add_argument("--structures", action="append", default=[],
                   help="prepare-ct-structures folder: its train structures on its train slices (repeatable)")
    d.add_argument("--unlabelled", action="append", default=[],
                   help="folder of images without masks: data-engine targets only (repeatable; needs --data-engine)")
    d.add_argument("--unlabelled-only", default=None,
                   help="use only these --unlabelled images: a text file of stems, or FILE.json:KEY (a list in it)")
    d.add_argument("--data-engine", type=int, default=0, metavar="N",
                   help="≤ N stock-model box predictions on random boxes per image as click/box targets (0 = off)")
    d.add_argument("--engine-boxes", type=int, default=16, help="random boxes tried per image by the data engine")
    d.add_argument("--nifti", action="append", default=[], help="VOLUME:MASK NIfTI pair → 2-D slices (repeatable)")
    d.add_argument("--nifti-labels", default=None, help="comma list of label values of a multilabel NIfTI mask")
    d.add_argument("--nifti-axis", type=int, default=2)
    d.add_argument("--nifti-min-pixels", type=int, default=50)
    d.add_argument("--holdout", type=float, default=0.0, help="share of folder/manifest images held out, by patient")
    d.add_argument("--split-seed", type=int, default=0)
    d.add_argument("--max-images", type=int, default=None, help="use only the first N training images (quick runs)")
    d.add_argument("--cls-csv", default=None, help="CXR-LT train_labeled.csv layout (blank = not assessed)")
    d.add_argument("--cls-images", default=None, help="root of the CSV's fpath column (default: the CSV's folder)")
    d.add_argument("--strict", action="store_true", help="bad input is an error instead of a counted skip")
    m = p.add_argument_group("model")
    m.add_argument("--init", default=None, help="project checkpoint to start from (default: stock LiteMedSAM)")
    m.add_argument("--init-state", default=None,
                   help="then load the trained parameters of a run's last.pt (e.g. an interrupted run) on top of --init")
    m.add_argument("--device", default="cpu")
    m.add_argument("--lora", action="store_true", help="train LoRA adapters on the image encoder (no embedding cache)")
    m.add_argument("--lora-r", type=int, default=8)
    m.add_argument("--lora-alpha", type=int, default=16)
    m.add_argument("--lora-stages", type=int, default=None,
                   help="LoRA on the last K (1-3) TinyViT stages only; the frozen stages' output is computed once "
                        "per image and cached (default: all 4 stages, no cache)")
    m.add_argument("--lora-targets", default="qkv,proj",
                   help="comma list of the Linear layer names that get adapters (TinyViT: qkv, proj, fc1, fc2)")
    m.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    m.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU (CPUs with bf16 units)")
    m.add_argument("--compile", action="store_true", help="torch.compile the mask decoder (CUDA)")
    m.add_argument("--freeze-language", action="store_true")
    m.add_argument("--freeze-vision", action="store_true",
                   help="train the language pathway only (mask decoder and prompt encoder frozen): text prompts "
                        "improve, click and box behaviour cannot change")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--steps-per-epoch", type=int, default=None)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--lr-vision", type=float, default=1e-5, help="paper: 1e-5")
    t.add_argument("--lr-language", type=float, default=5e-6, help="paper: 5e-6")
    t.add_argument("--lr-lora", type=float, default=None, help="the encoder's LoRA adapters (default: --lr-vision)")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--warmup-steps", type=int, default=10)
    t.add_argument("--modes", default=",".join(MODES), help="prompt starts: click,box,text")
    t.add_argument("--mode-probs", type=_floats, default=(0.4, 0.3, 0.3))
    t.add_argument("--initial-prob", type=float, default=0.3, help="share of steps starting a new click sequence")
    t.add_argument("--max-clicks", type=int, default=24, help="length of the remembered click sequences")
    t.add_argument("--rollout-max", type=int, default=0,
                   help="continuation steps first add 0..N clicks without gradient (deeper click sequences)")
    t.add_argument("--sequence-max", type=int, default=0,
                   help="train each batch through a click sequence, one optimiser step per click: its first "
                        "prediction, then 0..N corrective clicks on the previous step's masks (0 = off)")
    t.add_argument("--sequence-zero-prob", type=float, default=0.3,
                   help="share of sequences that stop after the first prediction (click / box / text alone)")
    t.add_argument("--val-initial", action="store_true", help="validate the starting model too")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--val-clicks", type=int, default=5)
    t.add_argument("--resume", action="store_true", help="continue from RUNS_DIR/NAME/last.pt when it exists")
    t.add_argument("--no-progress", action="store_true")
    lo = p.add_argument_group("loss (paper Eq. 6-10)")
    lo.add_argument("--no-uncertainty-weighting", action="store_true", help="w = 1 (plain Dice)")
    lo.add_argument("--no-detach-weight", action="store_true", help="let gradients flow through w = exp(λu)")
    lo.add_argument("--normalize-weight", action="store_true", help="w / max(w) per batch (seed code)")
    lo.add_argument("--beta", type=float, default=0.5)
    lo.add_argument("--lam", type=float, default=1.0)
    lo.add_argument("--bce-weight", type=float, default=0.0)
    lo.add_argument("--iou-weight", type=float, default=0.0)
    lo.add_argument("--align-weight", type=float, default=0.0)
    lo.add_argument("--monotone-weight", type=float, default=0.0,
                    help="weight of the hinge max(0, dice(after a click) - dice(before)): clicks must not hurt")
    lo.add_argument("--no-hitl", action="store_true")
    lo.add_argument("--hitl-fraction", type=float, default=0.3)
    lo.add_argument("--hitl-rounds", type=int, default=4)
    lo.add_argument("--random-rounds", action="store_true", help="1..hitl-rounds rounds per step")
    lo.add_argument("--click-sampling", default="uniform", choices=("uniform", "deepest", "mixed"))
    lo.add_argument("--deepest-prob", type=float, default=0.5)
    c = p.add_argument_group("classification")
    c.add_argument("--cls-loss", default="logit-adjusted", choices=("logit-adjusted", "asl", "bce"))
    c.add_argument("--cls-epochs", type=int, default=300)
    c.add_argument("--cls-lr", type=float, default=1e-3)
    c.add_argument("--cls-holdout", type=float, default=0.2)
    o = p.add_argument_group("cache and outputs")
    o.add_argument("--cache-dir", default=".cache/embeddings")
    o.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    o.add_argument("--augment", type=int, default=0,
                   help="random scale/rotation/shift/gamma variants per training image and flip (embedded once, cached)")
    o.add_argument("--augment-seed", type=int, default=0)
    o.add_argument("--export", default=None, help="also copy the final checkpoint here (e.g. assets/model/...)")
    return p


def _config(args) -> TrainConfig:
    loss = LossConfig(beta=args.beta, lam=args.lam, detach_weight=not args.no_detach_weight,
                      normalize_weight=args.normalize_weight, uncertainty_weighting=not args.no_uncertainty_weighting,
                      bce_weight=args.bce_weight, iou_weight=args.iou_weight, align_weight=args.align_weight,
                      monotone_weight=args.monotone_weight,
                      hitl=not args.no_hitl, hitl_fraction=args.hitl_fraction, hitl_rounds=args.hitl_rounds,
                      random_rounds=args.random_rounds, click_sampling=args.click_sampling,
                      deepest_prob=args.deepest_prob)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise DataError(f"unknown prompt modes {bad}; choose from {MODES}")
    probs = tuple(args.mode_probs)
    if len(probs) < len(modes):
        probs = tuple([1.0] * len(modes))
    return TrainConfig(name=args.name, runs_dir=args.runs_dir, epochs=args.epochs, batch_size=args.batch_size,
                       steps_per_epoch=args.steps_per_epoch, max_steps=args.max_steps, lr_vision=args.lr_vision,
                       lr_language=args.lr_language, lr_lora=args.lr_lora, weight_decay=args.weight_decay,
                       warmup_steps=args.warmup_steps,
                       modes=modes, mode_probs=probs[: len(modes)], initial_prob=args.initial_prob,
                       max_clicks=args.max_clicks, rollout_max=args.rollout_max,
                       sequence_max=args.sequence_max, sequence_zero_prob=args.sequence_zero_prob,
                       cpu_bf16=args.cpu_bf16, val_initial=args.val_initial,
                       train_language=not args.freeze_language and "text" in modes,
                       train_decoder=not args.freeze_vision, train_prompt_encoder=not args.freeze_vision,
                       lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                       lora_stages=args.lora_stages, lora_targets=tuple(args.lora_targets.split(",")),
                       device=args.device,
                       amp=not args.no_amp, compile=args.compile, seed=args.seed, save_every=args.save_every,
                       val_clicks=args.val_clicks, progress=not args.no_progress, loss=loss)


def _init_encoder_stages(init: str | None) -> int | None:
    """How many last TinyViT stages the start checkpoint changes: 0 (no encoder weights), 1..4, or None when it
    holds other encoder weights too (patch embedding, neck: a whole-encoder checkpoint)."""
    from training.lora import NUM_STAGES

    if not init:
        return 0
    from safetensors import safe_open

    with safe_open(str(init), framework="pt") as handle:
        keys = [k for k in handle.keys() if k.startswith("image_encoder.")]
    if not keys:
        return 0
    if not all(k.startswith("image_encoder.layers.") for k in keys):
        return None
    return NUM_STAGES - min(int(k.split(".")[2]) for k in keys)


def _box_labels(model, init: str | None, trained: set[str]) -> list[str]:
    """The new checkpoint's ``box_labels``: the starting checkpoint's (its decoder still answers them) and this run's
    named objects; none — every label the checkpoint's own decoder's — when it starts from a checkpoint without the
    list (older checkpoints behave as before)."""
    from training.cache import box_labels

    start = list((model.info.extra or {}).get("box_labels", [])) if init else []
    if init and not start:
        return []
    return box_labels([*start, *trained])


def _stored_encoder(cfg: TrainConfig, init_stages: int | None) -> bool | tuple[str, ...]:
    """The encoder weights the run's checkpoint stores: those its LoRA trained and those its start changed."""
    from training.lora import NUM_STAGES

    if init_stages is None:
        return True
    stages = max(init_stages, (cfg.lora_stages or NUM_STAGES) if cfg.lora else 0)
    return tuple(f"image_encoder.layers.{i}." for i in range(NUM_STAGES - stages, NUM_STAGES)) or False


def _split_stages(cfg: TrainConfig, init_stages: int | None) -> int | None:
    """K when the encoder is used split before its last K stages: a LoRA run on the last K stages, or a start
    checkpoint that changed those stages only (its embeddings are then the head's output on cached trunk features)."""
    from training.lora import NUM_STAGES

    if cfg.lora:
        return cfg.lora_stages
    return init_stages if init_stages and init_stages < NUM_STAGES else None


def _split_cache(model, stages: int, cache_dir: str):
    """The encoder split before its last ``stages`` stages, the trunk's output cached under a name of the trunk's
    own weights (so runs with other heads reuse it)."""
    from core_model.model import encoder_version
    from training.cache import EmbeddingCache, SplitCache
    from training.lora import NUM_STAGES, EncoderSplit

    split = EncoderSplit(model, stages)
    frozen = ("image_encoder.patch_embed.",) + tuple(f"image_encoder.layers.{i}." for i in range(NUM_STAGES - stages))
    weights = {k: v for k, v in model.state_dict().items() if k.startswith(frozen)}
    tag = f"trunk{NUM_STAGES - stages}-" + encoder_version(weights).removeprefix("encoder-")
    return SplitCache(EmbeddingCache(cache_dir, tag=tag), split.trunk, split.head)


def _manifest_split(manifest: str, args, skips: SkipLog, counts: Counter) -> tuple[list, list]:
    """(training, validation) samples of one manifest: items of ``--manifest-split`` and without a split train
    (``--holdout`` of them by patient validate), its ``validation`` items validate; ``test`` items are counted, not
    used; the site's held-out split is never trained on."""
    from annotations_db.manifest import HELDOUT, ManifestError, normalise_split
    from training.data import manifest_samples, split_by_group

    try:
        chosen = normalise_split(args.manifest_split)
    except ManifestError as exc:
        raise DataError(f"--manifest-split: {exc}") from exc
    if chosen == HELDOUT:
        raise DataError("--manifest-split heldout: the site's held-out split is for the promotion gate, never "
                        "trained on")
    items = manifest_samples(manifest, skips, splits=(chosen, None), split_counts=counts)
    train, val = split_by_group(items, args.holdout, args.split_seed)
    if chosen != "validation":
        val += manifest_samples(manifest, SkipLog(strict=skips.strict), splits=("validation",))
    return train, val


def _stems(spec: str) -> list[str]:
    """``--unlabelled-only``: a text file of image stems (one a line), or ``FILE.json:KEY`` (the list under KEY)."""
    path, _, key = spec.partition(".json:")
    try:
        if key:
            values = json.loads(Path(path + ".json").read_text())[key]
            if not isinstance(values, list):
                raise TypeError(f"{key!r} is not a list")
            return [str(v) for v in values]
        return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"--unlabelled-only {spec}: {exc}") from None


def _engine(args, samples: list, skips: SkipLog, progress: bool) -> tuple[dict, dict]:
    """The data engine's targets (training.data_engine) from the stock model, on its own embedding cache."""
    from core_model.model import build_model
    from training.cache import EmbeddingCache
    from training.data_engine import EngineConfig, engine_targets

    stock = build_model(None, device="cpu")
    cfg = EngineConfig(boxes=args.engine_boxes, keep=args.data_engine, seed=args.seed)
    cache = EmbeddingCache(args.cache_dir, tag=stock.encoder_version)
    t0 = time.perf_counter()
    targets, info = engine_targets(samples, stock, cache, cfg, skips, progress)
    info["seconds"] = time.perf_counter() - t0
    log.info("data engine: %d targets on %d images in %.0fs (%s)", info["counts"].get("kept", 0), info["images"],
             info["seconds"], info["counts"])
    return targets, info


def _setup_logging(run_dir: Path, is_main: bool) -> None:
    root = logging.getLogger("training")
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if not is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in (logging.FileHandler(run_dir / "train.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def train_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    tasks = {t.strip() for t in args.task.split(",") if t.strip()}
    if not tasks <= {"seg", "cls"} or not tasks:
        print(f"train: --task must be seg, cls or seg,cls (got {args.task!r})", file=sys.stderr)
        return 2
    try:
        return _run(args, tasks)
    except DataError as exc:
        print(f"train: bad input: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"train: failed: {exc}", file=sys.stderr)
        return 3


def _run(args, tasks: set[str]) -> int:  # noqa: C901 (the whole run, top to bottom)
    import torch

    from core_model.model import build_model, encoder_version
    from training.cache import EmbeddingCache, prepare_images
    from training.data import (cxrlt_samples, folder_samples, nifti_samples, split_by_group, structure_samples,
                               unlabelled_samples)
    from training.distributed import barrier, cleanup, init_distributed

    cfg = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist_info = init_distributed(cfg.device)
    run_dir = Path(cfg.runs_dir) / cfg.name
    _setup_logging(run_dir, dist_info.is_main)
    torch.manual_seed(cfg.seed)
    started = time.time()
    skips = SkipLog(strict=args.strict)
    model = build_model(args.init, device="cpu")
    start_encoder_version = model.encoder_version
    if args.init_state:
        from training.trainer import load_trained_params

        if not Path(args.init_state).is_file():
            raise DataError(f"{args.init_state}: --init-state file not found")
        load_trained_params(model, args.init_state)
    cache = EmbeddingCache(args.cache_dir, tag=model.encoder_version)
    init_stages = _init_encoder_stages(args.init)
    stages = _split_stages(cfg, init_stages)
    encoder_split = _split_cache(model, stages, args.cache_dir) if stages else None
    results: dict = {"command": "python launch.py train " + shlex.join(args.argv),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "world_size": dist_info.world_size}
    seg_info: dict = {}
    cls_info: dict | None = None
    split: dict = {}

    if "seg" in tasks:
        samples, held = [], []
        for folder in args.folder:
            items = folder_samples(folder, args.mask_suffix, skips, args.group_column)
            train, val = split_by_group(items, args.holdout, args.split_seed)
            samples += train
            held += val
        manifest_splits: Counter = Counter()
        for manifest in args.manifest:
            train, val = _manifest_split(manifest, args, skips, manifest_splits)
            samples += train
            held += val
        if args.manifest:
            seg_info["manifest_splits"] = dict(manifest_splits)
        for folder in args.structures:
            samples += structure_samples(folder, skips)
        labels = tuple(int(x) for x in args.nifti_labels.split(",")) if args.nifti_labels else None
        for pair in args.nifti:
            if ":" not in pair:
                raise DataError(f"--nifti expects VOLUME:MASK, got {pair!r}")
            volume, mask = pair.split(":", 1)
            samples += nifti_samples(volume, mask, args.nifti_axis, args.nifti_min_pixels, labels, skips=skips)
        if args.unlabelled and not args.data_engine:
            raise DataError("--unlabelled images need --data-engine N (they have no mask of their own)")
        only = _stems(args.unlabelled_only) if args.unlabelled_only else None
        for folder in args.unlabelled:
            samples += unlabelled_samples(folder, only)
        if args.max_images:
            samples = samples[: args.max_images]
        if not samples:
            raise DataError("no segmentation data: give --folder, --manifest, --structures or --nifti")
        split = {"train": [s.key for s in samples], "heldout": [s.key for s in held]}
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "split.json").write_text(json.dumps(split, indent=1))
        t0 = time.perf_counter()
        extra_objects = None
        if args.data_engine:
            extra_objects, seg_info["data_engine"] = _engine(args, samples, skips, cfg.progress and dist_info.is_main)
        # rank 0 fills the cache first; the others then read it
        prepared = val_prepared = []
        for turn in ((0,) if not dist_info.enabled else (0, 1)):
            if (turn == 0) == dist_info.is_main:
                prepared = prepare_images(samples, model, cache, skips, flip=not args.no_flip, keep_images=cfg.lora,
                                          augment=args.augment, augment_seed=args.augment_seed,
                                          progress=cfg.progress and dist_info.is_main, split=encoder_split,
                                          extra_objects=extra_objects)
                val_prepared = prepare_images(held, model, cache, SkipLog(), flip=False, keep_images=cfg.lora,
                                              split=encoder_split)
            barrier(dist_info)
        log.info("%d training images (%d objects), %d held out; embeddings: %d cached, %d computed in %.1fs",
                 len(prepared), sum(len(p.objects) for p in prepared), len(val_prepared), cache.hits, cache.computed,
                 cache.encode_seconds)
        seg_info["prepare_seconds"] = time.perf_counter() - t0
        from training.trainer import SegTrainer, quick_validate

        trainer = SegTrainer(model, cfg, prepared, val_prepared, dist_info)
        if dist_info.is_main and val_prepared and cfg.val_initial and not (args.resume and (run_dir / "last.pt").is_file()):
            trainer.val_history.append({"step": 0, "epoch": 0.0,
                                        **quick_validate(model, val_prepared, cfg.val_clicks, cfg.device)})
            model.train()
            model.image_encoder.eval()  # frozen BatchNorm statistics, also under LoRA
        seg_info.update(trainer.train(resume=args.resume))
        seg_info.update({"train_images": len(prepared), "train_objects": len(trainer.objects),
                         "heldout_images": len(val_prepared), "history": trainer.history,
                         "validation": trainer.val_history})
        if cfg.lora:
            from training.lora import merge_lora

            merge_lora(model)
            model.encoder_version = encoder_version(model.state_dict())
            cache = EmbeddingCache(args.cache_dir, tag=model.encoder_version)  # for the classifier below
        model.eval()
        if cfg.train_language:
            model.language.trained = True
    if "cls" in tasks and dist_info.is_main:
        if not args.cls_csv:
            raise DataError("--task cls needs --cls-csv")
        from training.classify import train_classifier

        cls_samples, classes = cxrlt_samples(args.cls_csv, args.cls_images, skips=skips)
        cls_info = train_classifier(model, cls_samples, classes, cache, loss=args.cls_loss, epochs=args.cls_epochs,
                                    lr=args.cls_lr, holdout=args.cls_holdout, seed=cfg.seed)
    if dist_info.is_main:
        from training.plots import training_curves
        from training.trainer import finished_info

        findings_cards: dict = {}
        classifier_trained = {name: bool(h["trained_classes"]) for name, h in (cls_info or {}).get("heads", {}).items()}
        trained_classes = {n: h["trained_classes"] for n, h in (cls_info or {}).get("heads", {}).items()}
        if args.init and not cls_info:
            from core_model.model import ModelInfo  # keep what the starting checkpoint had (its heads are kept too)

            start = getattr(model, "info", None) or ModelInfo()
            classifier_trained = dict(start.classifier_trained)
            trained_classes = dict((start.extra or {}).get("trained_classes", {}))
            if model.encoder_version == start_encoder_version and (start.extra or {}).get("findings"):
                # the heads and the image embedding they read are the starting checkpoint's: its evidence still holds
                from core_model.findings import carried_over

                findings_cards = carried_over(start.extra["findings"], cfg.name, start.version)
        data = args.folder + args.manifest + args.structures + args.nifti + ([args.cls_csv] if args.cls_csv else [])
        extra = {"trained_classes": trained_classes, "data": data,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": sorted(tasks),
                 "config": cfg.as_dict()}
        if findings_cards:
            extra["findings"] = findings_cards
        from training.cache import trained_labels

        labels = _box_labels(model, args.init, trained_labels(prepared) if "seg" in tasks else set())
        if labels:
            extra["box_labels"] = labels
        if "seg" not in tasks:
            cfg.modes = ()  # a classification-only run does not claim a trained language pathway
        info = finished_info(cfg, extra, classifier_trained)
        info.language_trained = bool(model.language.trained)
        info.clicks_trained = "seg" in tasks or bool(args.init and getattr(model, "info", None) and model.info.clicks_trained)
        checkpoint = model.save_checkpoint(run_dir / "checkpoint.safetensors", info,
                                           include_encoder=_stored_encoder(cfg, init_stages))
        results.update({"segmentation": seg_info or None, "classification": cls_info, "skipped": skips.as_dict(),
                        "checkpoint": str(checkpoint), "checkpoint_mb": checkpoint.stat().st_size / 2**20,
                        "seconds": time.time() - started})
        (run_dir / "metrics.json").write_text(json.dumps(results, indent=1, default=str))
        training_curves(seg_info.get("history", []), seg_info.get("validation", []), cls_info, run_dir / "curves.png")
        if args.export:
            import shutil

            Path(args.export).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkpoint, args.export)
        log.info("done in %.0fs: %s (%.1f MB); skipped %d item(s)%s", results["seconds"], checkpoint,
                 results["checkpoint_mb"], skips.total, f" {dict(skips.counts)}" if skips.total else "")
    barrier(dist_info)
    cleanup(dist_info)
    return 0


def main(argv: list[str] | None = None) -> int:
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(train_main())
