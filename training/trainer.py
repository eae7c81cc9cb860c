"""The segmentation trainer: prompt-mode/phase batches, click-sequence memory, AdamW, DDP, resume, run outputs.

Run folder ``runs/<name>/``: ``config.json``, ``last.pt`` (resume state, float32), ``checkpoint.safetensors``
(the project checkpoint, fp16), ``progress.jsonl`` (one line per step: step, total, loss), ``metrics.json``
(per-step losses, per-epoch validation, skip counts, timings),
``curves.png`` and ``train.log``.

Learning rates: the paper's AdamW lrs are the defaults (vision 1e-5, language 5e-6); linear warm-up then cosine decay
to ``min_lr_ratio`` of the peak. Mixed precision: bf16 autocast on CUDA (fp32 on CPU); channels_last for the encoder
input on CUDA; pinned host memory for batches copied to CUDA; ``compile=True`` wraps the mask decoder in
``torch.compile`` (CUDA only).
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core_model.model import ModelInfo
from training.cache import PreparedImage
from training.clicks import deepest_error_click, deepest_point
from training.distributed import DistInfo, all_reduce_mean, barrier
from training.engine import SegStep, StepBatch
from training.losses import LossConfig, pad_points, simulated_click

log = logging.getLogger("training")


def cpu_has_bf16() -> bool | None:
    """Whether the CPU has bf16 arithmetic units (Linux ``/proc/cpuinfo`` flags); None where that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags

MODES = ("click", "box", "text")


@dataclass
class TrainConfig:
    name: str = "run"
    runs_dir: str = "runs"
    epochs: int = 6
    batch_size: int = 8
    steps_per_epoch: int | None = None  # default: ceil(objects / (batch · world))
    max_steps: int | None = None  # stop after this many optimiser steps in total (for quick runs / tests)
    lr_vision: float = 1e-5
    lr_language: float = 5e-6
    lr_lora: float | None = None  # the encoder's LoRA adapters (default: lr_vision)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    modes: tuple[str, ...] = MODES
    mode_probs: tuple[float, ...] = (0.4, 0.3, 0.3)
    initial_prob: float = 0.3  # share of steps that start a new sequence (else continue a remembered one)
    max_clicks: int = 24  # a remembered sequence is restarted after this many clicks
    rollout_max: int = 0  # every step first advances 0..rollout_max clicks without gradient (RITM-style: the click
    # states come from the current model; with initial_prob = 1 no remembered state is used at all)
    sequence_max: int = 0  # > 0: a batch is trained through a whole click sequence, one optimiser step per click:
    # its first prediction (click / box / text alone), then L corrective clicks on the masks of the previous step
    # (L = 0 with probability sequence_zero_prob, else uniform in 1..sequence_max); every forward pass is trained
    sequence_zero_prob: float = 0.3
    val_initial: bool = False  # also validate before the first step
    first_click_deepest_prob: float = 0.5  # else a random interior point of the object
    box_jitter: float = 0.05  # ± fraction of the box size per side
    train_decoder: bool = True
    train_prompt_encoder: bool = True
    train_language: bool = True
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_stages: int | None = None  # LoRA on the last K TinyViT stages only (frozen trunk cached); None = all
    lora_targets: tuple[str, ...] = ("qkv", "proj")
    device: str = "cpu"
    amp: bool = True  # bf16 autocast when CUDA
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (≈1.4× faster decoder passes where the CPU has bf16 units)
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    save_every: int = 50
    val_clicks: int = 5
    max_nan_steps: int = 20
    progress: bool = True
    loss: LossConfig = field(default_factory=LossConfig)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["loss"] = self.loss.as_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        loss = LossConfig(**data.pop("loss", {}))
        for key in ("modes", "mode_probs", "lora_targets"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(loss=loss, **data)


class TrainingError(RuntimeError):
    """Training cannot go on (no data, too many non-finite steps, a resume state that does not fit)."""


@dataclass
class _State:
    points: list
    logits: torch.Tensor  # (1, 256, 256) float16
    box: tuple | None
    phrase: str | None


def lr_lambda(cfg: TrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def set_trainable(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """requires_grad on the trained parts only; returns AdamW parameter groups (vision / language)."""
    for p in model.parameters():
        p.requires_grad_(False)
    vision: list[nn.Parameter] = []
    if cfg.train_decoder:
        vision += list(model.mask_decoder.parameters())
    if cfg.train_prompt_encoder:
        vision += list(model.prompt_encoder.parameters())
    lora = [p for n, p in model.image_encoder.named_parameters() if "lora_" in n] if cfg.lora else []
    language = list(model.language.parameters()) if cfg.train_language else []
    for p in vision + lora + language:
        p.requires_grad_(True)
    groups = [{"params": vision, "lr": cfg.lr_vision, "name": "vision"}] if vision else []
    if lora:
        groups.append({"params": lora, "lr": cfg.lr_lora or cfg.lr_vision, "name": "lora"})
    if language:
        groups.append({"params": language, "lr": cfg.lr_language, "name": "language"})
    return groups


def _interior_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    candidates = np.flatnonzero(dist >= max(1.0, 0.3 * dist.max()))
    r, c = divmod(int(candidates[rng.integers(candidates.size)]), mask.shape[1])
    return c, r


class SegTrainer:
    """Decoder + prompt encoder + language pathway training (LoRA on the encoder optional)."""

    def __init__(self, model, cfg: TrainConfig, train_images: list[PreparedImage],
                 val_images: list[PreparedImage] | None = None, dist_info: DistInfo | None = None) -> None:
        if not train_images:
            raise TrainingError("no usable training image (see the skip counts)")
        self.model = model
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = torch.device(cfg.device)
        self.train_images = train_images
        self.val_images = val_images or []
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.rng = np.random.default_rng(cfg.seed + 1000 * self.dist.rank)
        self.objects = [(i, j) for i, image in enumerate(train_images) for j in range(len(image.objects))]
        self.eligible = {
            "click": [o for o in self.objects if train_images[o[0]].objects[o[1]].kind in ("component", "pseudo")],
            "box": list(self.objects),
            "text": [o for o in self.objects if train_images[o[0]].objects[o[1]].kind != "pseudo"],  # no name
        }
        if not self.eligible["click"]:
            self.eligible["click"] = list(self.objects)
        self.bank: dict[tuple[int, int, str], _State] = {}
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        self.step = 0
        self.nan_steps = 0
        self.use_cuda = self.device.type == "cuda"
        self.encode = None  # encoder input → embedding, when the encoder trains
        if cfg.lora:
            from training.lora import EncoderSplit, add_lora, has_lora

            if not has_lora(model):
                add_lora(model, cfg.lora_r, cfg.lora_alpha, targets=cfg.lora_targets, stages=cfg.lora_stages)
            self.encode = EncoderSplit(model, cfg.lora_stages).head if cfg.lora_stages else model.encode_image
        model.to(self.device)
        model.train()
        model.image_encoder.eval()  # frozen BatchNorm statistics, also under LoRA
        self.groups = set_trainable(model, cfg)
        if not any(g["params"] for g in self.groups):
            raise TrainingError("nothing to train: every part is frozen")
        if cfg.compile and self.use_cuda:
            model.mask_decoder = torch.compile(model.mask_decoder)
        autocast = "cuda" if (cfg.amp and self.use_cuda) else ("cpu" if cfg.cpu_bf16 else None)
        if autocast == "cpu" and cpu_has_bf16() is False:
            log.warning("--cpu-bf16 on a CPU without bf16 units (no avx512_bf16/amx_bf16 flag): bf16 is emulated "
                        "there and runs several times slower than float32; drop the flag on this machine")
        self.step_module: nn.Module = SegStep(model, cfg.loss, encode=self.encode, autocast=autocast,
                                              seed=cfg.seed + self.dist.rank)
        self.sequence: tuple[StepBatch, list[tuple[int, int]]] | None = None
        self.sequence_left = 0
        self.ddp = self.step_module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.step_module, device_ids=[self.dist.local_rank] if self.use_cuda else None,
                           find_unused_parameters=True, broadcast_buffers=False)
        self.optimizer = torch.optim.AdamW(self.groups, weight_decay=cfg.weight_decay)
        per_step = cfg.batch_size * self.dist.world_size
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(self.objects) / per_step))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))

    # ------------------------------------------------------------------ batches
    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.use_cuda:
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def make_batch(self) -> tuple[StepBatch, list[tuple[int, int]]]:
        cfg = self.cfg
        probs = np.asarray(cfg.mode_probs[: len(cfg.modes)], dtype=float)
        mode = str(self.rng.choice(cfg.modes, p=probs / probs.sum()))
        pool = self.eligible[mode]
        remembered = [k[:2] for k in self.bank if k[2] == mode]
        continuation = len(remembered) >= cfg.batch_size and self.rng.random() >= cfg.initial_prob
        source = remembered if continuation else pool
        replace = len(source) < cfg.batch_size
        ids = [source[k] for k in self.rng.choice(len(source), cfg.batch_size, replace=replace)]
        targets, valid_hw, concepts, points, boxes, phrases, prevs = [], [], [], [], [], [], []
        for i, j in ids:
            image = self.train_images[i]
            obj = image.objects[j]
            h, w = image.valid
            target = obj.mask
            targets.append(target)
            valid_hw.append((h, w))
            concepts.append(obj.phrases[0])
            if continuation:
                state = self.bank[(i, j, mode)]
                prev = state.logits.float()
                click = simulated_click(prev[0].numpy(), target.numpy().astype(np.float32), (h, w), cfg.loss, self.rng)
                points.append(list(state.points) + ([click] if click is not None else []))
                prevs.append(prev)
                boxes.append(state.box)
                phrases.append(state.phrase)
                continue
            if mode == "click":
                mask_np = target.numpy()
                if self.rng.random() < cfg.first_click_deepest_prob:
                    x, y = deepest_point(mask_np)
                else:
                    x, y = _interior_point(mask_np, self.rng)
                j_ = cfg.loss.jitter
                points.append([(float(np.clip(x + self.rng.uniform(-j_, j_), 0, w - 1)),
                                float(np.clip(y + self.rng.uniform(-j_, j_), 0, h - 1)), 1)])
                boxes.append(None)
                phrases.append(None)
            elif mode == "box":
                x0, y0, x1, y1 = obj.box
                bw, bh = x1 - x0 + 1, y1 - y0 + 1
                jitter = lambda size: float(self.rng.uniform(-cfg.box_jitter, cfg.box_jitter) * size)  # noqa: E731
                box = (float(np.clip(x0 + jitter(bw), 0, w - 1)), float(np.clip(y0 + jitter(bh), 0, h - 1)),
                       float(np.clip(x1 + jitter(bw), 0, w - 1)), float(np.clip(y1 + jitter(bh), 0, h - 1)))
                points.append([])
                boxes.append(box)
                phrases.append(None)
            else:
                points.append([])
                boxes.append(None)
                phrases.append(str(self.rng.choice(obj.phrases)))
        batch = StepBatch(
            targets=self._tensor(torch.stack(targets).float()[:, None]),
            valid_hw=valid_hw, concepts=concepts, points=points, mode=mode,
            boxes=self._tensor(torch.tensor(boxes, dtype=torch.float32)) if mode == "box" else None,
            phrases=phrases if mode == "text" else None,
            prev_logits=self._tensor(torch.stack(prevs)) if continuation else None)
        if cfg.lora:
            images = torch.stack([self.train_images[i].image.float() for i, _ in ids])
            if self.use_cuda and cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            batch.images = self._tensor(images)
        else:
            batch.embeddings = self._tensor(torch.stack([self.train_images[i].embedding for i, _ in ids]).float())
        return batch, ids

    @torch.no_grad()
    def rollout(self, batch: StepBatch, rounds: int) -> None:
        """Advance a continuation batch by ``rounds`` corrective clicks without gradient (deeper sequences for the
        price of forward passes only); updates the batch's clicks and fed-back logits in place."""
        if rounds <= 0 or batch.embeddings is None:
            return
        tokens = self.model.language.tokens(batch.phrases) if batch.phrases else None
        for _ in range(rounds):  # a new sequence starts without a mask prompt (its first prediction), then clicks
            logits, _ = self.step_module.decode(batch.embeddings, pad_points(batch.points, self.device), batch.boxes,
                                                batch.prev_logits, tokens)
            self._add_clicks(batch.points, logits, batch, self.cfg.max_clicks - 1)
            batch.prev_logits = logits.detach()

    def _add_clicks(self, points: list[list], logits: torch.Tensor, batch: StepBatch, limit: int) -> None:
        """Append to each sample's ``points`` (while it has fewer than ``limit``) one simulated corrective click on
        its prediction ``logits`` (B, 1, 256, 256) against ``batch``'s targets."""
        logits_np = logits[:, 0].float().cpu().numpy()
        targets = batch.targets[:, 0].cpu().numpy()
        for k, sample in enumerate(points):
            if len(sample) >= limit:
                continue
            click = simulated_click(logits_np[k], targets[k], batch.valid_hw[k], self.cfg.loss, self.rng)
            if click is not None:
                sample.append(click)

    def next_batch(self) -> tuple[StepBatch, list[tuple[int, int]]]:
        """The next step's batch: the running click sequence's next click, or a new batch (rolled out when asked)."""
        if self.sequence is not None:
            batch, ids = self.sequence
            self.sequence = None
            return batch, ids
        batch, ids = self.make_batch()
        if self.cfg.sequence_max:
            zero = self.rng.random() < self.cfg.sequence_zero_prob
            self.sequence_left = 0 if zero else int(self.rng.integers(1, self.cfg.sequence_max + 1))
        elif self.cfg.rollout_max:
            self.rollout(batch, int(self.rng.integers(0, self.cfg.rollout_max + 1)))
        return batch, ids

    def _advance(self, batch: StepBatch, ids, out) -> None:
        """Queue the sequence's next step: one corrective click per sample on this step's (refined) masks."""
        if self.sequence_left <= 0:
            return
        self.sequence_left -= 1
        points = [list(p) for p in out.points]
        self._add_clicks(points, out.logits, batch, self.cfg.max_clicks)
        nxt = StepBatch(targets=batch.targets, valid_hw=batch.valid_hw, concepts=batch.concepts, points=points,
                        embeddings=out.embeddings, boxes=batch.boxes, phrases=batch.phrases,
                        prev_logits=out.logits, mode=batch.mode)  # SegStep's logits: detached float32
        # with a trained encoder the sequence's later clicks reuse its first step's (detached) embeddings: the
        # encoder learns from first predictions, the decoder from every click, at one encoder pass per sequence
        self.sequence = (nxt, ids)

    def _remember(self, ids, batch: StepBatch, out) -> None:
        for k, (i, j) in enumerate(ids):
            key = (i, j, batch.mode)
            if len(out.points[k]) >= self.cfg.max_clicks:
                self.bank.pop(key, None)
                continue
            box = tuple(batch.boxes[k].tolist()) if batch.boxes is not None else None
            phrase = batch.phrases[k] if batch.phrases else None
            self.bank[key] = _State(out.points[k], out.logits[k].detach().to("cpu", torch.float16), box, phrase)

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.as_dict(), indent=2))
        if resume:
            self.load_state()
        barrier(self.dist)
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.name}", unit="step",
                       dynamic_ncols=True)
        t0 = time.perf_counter()
        samples = 0
        while self.step < self.total_steps:
            batch, ids = self.next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            out = self.ddp(batch)
            out.loss.backward()
            params = [p for g in self.groups for p in g["params"] if p.grad is not None]
            finite = bool(torch.isfinite(out.loss.detach())) and all(bool(torch.isfinite(p.grad).all()) for p in params)
            if not finite:
                # with DDP the gradients are already averaged, so every rank takes the same decision
                self.nan_steps += 1
                log.warning("non-finite loss/gradient at step %d: step skipped (%d so far)", self.step, self.nan_steps)
                self.optimizer.zero_grad(set_to_none=True)
                if self.nan_steps > cfg.max_nan_steps:
                    raise TrainingError(f"{self.nan_steps} non-finite steps: stopping (lower the lr?)")
            else:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.optimizer.step()
                if cfg.sequence_max:
                    self._advance(batch, ids, out)
                else:
                    self._remember(ids, batch, out)
            self.scheduler.step()
            self.step += 1
            samples += len(ids)
            record = {"step": self.step, "mode": batch.mode, "continuation": batch.prev_logits is not None,
                      "clicks": float(np.mean([len(p) for p in batch.points])),
                      "lr": self.optimizer.param_groups[0]["lr"], "finite": finite,
                      **{k: all_reduce_mean(v, self.dist) if self.dist.enabled else v for k, v in out.parts.items()}}
            self.history.append(record)
            self._report(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", iou=f"{record['iou']:.3f}", mode=batch.mode[:1])
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                if self.val_images and self.dist.is_main:
                    metrics = quick_validate(self.model, self.validation_images(), self.cfg.val_clicks, self.device)
                    metrics["step"] = self.step
                    metrics["epoch"] = self.step / self.steps_per_epoch
                    self.val_history.append(metrics)
                    log.info("validation at step %d: %s", self.step, json.dumps(metrics))
                    self.model.train()
                    self.model.image_encoder.eval()  # frozen BatchNorm statistics, also under LoRA
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save_state()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        return {"steps": self.step, "seconds": elapsed, "samples_per_second": samples * self.dist.world_size / max(elapsed, 1e-9),
                "nan_steps": self.nan_steps}

    def _report(self, record: dict) -> None:
        """One line per step in ``progress.jsonl`` of the run folder (step, total, loss): what a job's worker reads
        to show progress and the loss curve live (the main rank only; appended across resumes)."""
        if not self.dist.is_main:
            return
        line = {"step": self.step, "total": self.total_steps, "loss": float(record.get("loss", float("nan"))),
                "time": time.time()}
        with open(self.run_dir / "progress.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    @torch.no_grad()
    def validation_images(self, batch_size: int = 8) -> list[PreparedImage]:
        """The held-out images with embeddings of the current encoder (re-encoded from their kept encoder inputs
        when the encoder trains; their cached embeddings otherwise)."""
        if self.encode is None or not all(im.image is not None for im in self.val_images):
            return self.val_images
        was_training = self.model.training
        self.model.eval()
        out = []
        for start in range(0, len(self.val_images), batch_size):
            chunk = self.val_images[start:start + batch_size]
            inputs = torch.stack([im.image for im in chunk]).float().to(self.device)
            embeddings = self.step_module.run_encoder(inputs).float().cpu()
            out += [replace(im, embedding=e.to(torch.float16)) for im, e in zip(chunk, embeddings)]
        self.model.train(was_training)
        self.model.image_encoder.eval()
        return out

    # ------------------------------------------------------------------ state
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p) for g in self.groups for p in g["params"]}
        state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if id(p) in names}
        return state

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        state = {"params": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "history": self.history,
                 "val_history": self.val_history, "nan_steps": self.nan_steps, "config": self.cfg.as_dict(),
                 "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                         "python": random.getstate()}}
        tmp = self.run_dir / "last.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / "last.pt")

    def load_state(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.is_file():
            log.info("no %s: starting from scratch", path)
            return False
        state = load_trained_params(self.model, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = state.get("history", [])
        self.val_history = state.get("val_history", [])
        self.nan_steps = int(state.get("nan_steps", 0))
        if "rng" in state and self.dist.rank == 0:
            self.rng.bit_generator.state = state["rng"]["numpy"]
        log.info("resumed from %s at step %d", path, self.step)
        return True


@torch.no_grad()
def load_trained_params(model: nn.Module, path: str | Path) -> dict:
    """Copy the trained parameters of a run's ``last.pt`` into ``model`` (names checked); returns the whole state."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    own = dict(model.named_parameters())
    missing = [n for n in state["params"] if n not in own]
    if missing:
        raise TrainingError(f"{path}: resume state has parameters this model lacks: {missing[:3]}")
    for name, value in state["params"].items():
        own[name].copy_(value)
    return state


@torch.no_grad()
def quick_validate(model, images: list[PreparedImage], clicks: int = 5, device="cpu", batch: int = 16) -> dict:
    """Model-grid check during training: deepest-error clicks on every component (mIoU@1..k), the box of every
    component and the text prompts ("lungs" for the whole mask, the side phrase for each component)."""
    model.eval()
    comps = [(im, ob) for im in images for ob in im.objects if ob.kind == "component"]
    ious = np.zeros((len(comps), clicks))
    box_ious, text_ious = [], []

    def iou_of(logits, target, hw):
        h, w = hw
        pred = logits[:h, :w] > 0
        gt = target[:h, :w]
        union = (pred | gt).sum()
        return float((pred & gt).sum() / union) if union else 1.0

    for start in range(0, len(comps), batch):
        chunk = comps[start:start + batch]
        emb = torch.stack([im.embedding for im, _ in chunk]).float().to(device)
        pts: list[list] = []
        for _, ob in chunk:
            x, y = deepest_point(ob.mask.numpy())
            pts.append([(float(x), float(y), 1)])
        prev = None
        for k in range(clicks):
            logits, _ = model.decode(emb, pad_points(pts, device), None, prev, None)
            prev = logits
            logits_np = logits[:, 0].cpu().numpy()
            for n, (im, ob) in enumerate(chunk):
                ious[start + n, k] = iou_of(logits_np[n], ob.mask.numpy(), im.valid)
                if k + 1 < clicks:
                    h, w = im.valid
                    c = deepest_error_click(logits_np[n][:h, :w] > 0, ob.mask.numpy()[:h, :w])
                    if c is not None:
                        pts[n].append((float(c[0]), float(c[1]), int(c[2])))
        boxes = torch.tensor([ob.box for _, ob in chunk], dtype=torch.float32, device=device)
        logits, _ = model.decode(emb, None, boxes, None, None)
        for n, (im, ob) in enumerate(chunk):
            box_ious.append(iou_of(logits[n, 0].cpu().numpy(), ob.mask.numpy(), im.valid))
    out = {f"miou@{k + 1}": float(ious[:, k].mean()) for k in range(clicks)} if len(comps) else {}
    out["box_iou"] = float(np.mean(box_ious)) if box_ious else None
    if model.language.trained or any(p.abs().sum() > 0 for p in model.language.projection.parameters()):
        texts = [(im, ob, ob.phrases[0]) for im in images for ob in im.objects]
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
            emb = torch.stack([im.embedding for im, _, _ in chunk]).float().to(device)
            tokens = model.language.tokens([p for _, _, p in chunk])
            logits, _ = model.decode(emb, None, None, None, tokens)
            for n, (im, ob, _) in enumerate(chunk):
                text_ious.append((ob.kind, iou_of(logits[n, 0].cpu().numpy(), ob.mask.numpy(), im.valid)))
        out["text_iou"] = float(np.mean([v for _, v in text_ious]))
        for label, kinds in (("text_side_iou", ("component",)), ("text_whole_iou", None)):
            values = [v for kind, v in text_ious if (kind in kinds if kinds else kind != "component")]
            if values:
                out[label] = float(np.mean(values))
    return out


def finished_info(cfg: TrainConfig, extra: dict, classifier_trained: dict[str, bool] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` written into the checkpoint header."""
    text = "text" in cfg.modes and cfg.train_language
    return ModelInfo(version=cfg.name, language_trained=text, classifier_trained=classifier_trained or {},
                     clicks_trained=True, extra=extra)
