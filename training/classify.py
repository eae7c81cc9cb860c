"""Multi-label classification heads (CXR-LT classes) on frozen image embeddings, with a long-tail-aware loss.

Data: the CXR-LT ``train_labeled.csv`` layout (:func:`training.data.cxrlt_samples`); a blank cell is *not assessed*
and is masked out of the loss (and of the metrics). Features: the head's own pooling (mean ‖ max of the cached
embedding), computed once; only ``MultiLabelHead.net`` trains.

Losses (``loss=``):
* ``logit-adjusted`` (default): BCE on ``logit + τ·log(π/(1−π))`` with π the class prior (CXR-LT 2024 train
  positive rate, :data:`core_model.classes.TRAIN_POSITIVE_COUNTS`); at inference the raw logit is used, which shifts
  decisions toward rare classes (Menon et al., ICLR 2021, binary form).
* ``asl``: asymmetric loss (Ridnik et al., ICCV 2021; γ+ = 0, γ− = 4, clip 0.05).
* ``bce``: plain masked BCE.

Classes never assessed in the training data keep an untrained head output: their final bias is set to the prior logit
so the head outputs the CXR-LT prior for them; the checkpoint lists the trained classes.
Per-class thresholds (the head's ``thresholds`` buffer) are tuned on the validation split (max Youden J) for classes
with both labels there, else left at the prior-free default 0.5.
"""
from __future__ import annotations

import logging


import numpy as np
import torch
import torch.nn.functional as F

from core_model.classes import TRAIN_IMAGES, TRAIN_POSITIVE_COUNTS
from core_model.findings import auroc
from training.cache import EmbeddingCache
from training.data import ClsSample, load_pixels, split_by_group

log = logging.getLogger("training.classify")


def prior_logits(classes: tuple[str, ...]) -> torch.Tensor:
    p = torch.tensor([max(TRAIN_POSITIVE_COUNTS.get(c, 1), 1) / TRAIN_IMAGES for c in classes], dtype=torch.float32)
    return torch.log(p / (1 - p))


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Mean loss over the assessed entries (labels ≥ 0) only."""
    mask = labels >= 0
    target = labels.clamp(min=0).float()
    if kind == "logit-adjusted":
        z = logits + tau * prior
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    elif kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "asl":
        p = torch.sigmoid(logits)
        p_neg = (p - 0.05).clamp(min=0)
        loss_pos = target * torch.log(p.clamp(min=1e-8))
        loss_neg = (1 - target) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg.pow(4)
        loss = -(loss_pos + loss_neg)
    else:
        raise ValueError(f"unknown classification loss {kind!r} (logit-adjusted | asl | bce)")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def pooled_features(model, samples: list[ClsSample], cache: EmbeddingCache, device="cpu") -> torch.Tensor:
    from core_model.model import MultiLabelHead

    feats = []
    for start in range(0, len(samples), 8):
        chunk = samples[start:start + 8]
        emb = cache.embeddings(model, [load_pixels(s.path) for s in chunk], device=device)
        feats.append(MultiLabelHead.pool(torch.stack(emb).float()))
    return torch.cat(feats)


def train_classifier(model, samples: list[ClsSample], csv_classes: tuple[str, ...], cache: EmbeddingCache,
                     label_sets: tuple[str, ...] = ("cxr-lt-26", "cxr-lt-40"), loss: str = "logit-adjusted",
                     epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-2, holdout: float = 0.2,
                     seed: int = 0, device="cpu") -> dict:
    """Train the heads of ``label_sets`` in place; returns metrics (per-class validation AUROC, trained classes)."""
    train, val = split_by_group(samples, holdout, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        features = pooled_features(model, train + val, cache, device)
    f_train, f_val = features[: len(train)], features[len(train):]
    results = {"n_train": len(train), "n_val": len(val), "loss": loss, "heads": {}}
    for name in label_sets:
        head = model.classifiers[name]
        classes = head.classes
        labels = torch.tensor([[s.labels.get(c, -1) for c in classes] for s in train + val])
        y_train, y_val = labels[: len(train)], labels[len(train):]
        assessed = (y_train >= 0).any(0) & ((y_train == 1).any(0))
        prior = prior_logits(classes)
        head.train()
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.net.parameters(), lr=lr, weight_decay=weight_decay)
        curve = []
        for epoch in range(epochs):
            torch.set_grad_enabled(True)
            optimizer.zero_grad()
            logits = head.net(f_train)
            value = masked_loss(logits, y_train, loss, prior)
            if not torch.isfinite(value):
                raise RuntimeError(f"classifier {name}: non-finite loss at epoch {epoch}")
            value.backward()
            optimizer.step()
            curve.append(float(value))
        head.eval()
        with torch.no_grad():
            head.kind.fill_(0)  # this head is the MLP layout (a kind-1 probe loaded from --init is replaced)
            head.calib_a.fill_(1.0)
            head.calib_b.fill_(0.0)
            last = head.net[-1]
            last.bias[~assessed] = prior[~assessed]
            last.weight[~assessed] = 0.0
            probs_val = torch.sigmoid(head.net(f_val)).numpy() if len(val) else np.zeros((0, len(classes)))
            thresholds = head.thresholds.clone()
            per_class = {}
            for k, c in enumerate(classes):
                if not bool(assessed[k]):
                    continue
                lab = y_val[:, k].numpy()
                keep = lab >= 0
                a = auroc(probs_val[keep, k], lab[keep]) if keep.any() else None
                per_class[c] = {"auroc": a, "val_pos": int((lab == 1).sum()), "val_neg": int((lab == 0).sum()),
                                "train_pos": int((y_train[:, k] == 1).sum())}
                if a is not None:
                    scores, truth = probs_val[keep, k], lab[keep]
                    best, best_t = -1.0, 0.5
                    for t in np.unique(scores):
                        j = ((scores >= t) & (truth == 1)).sum() / max(1, (truth == 1).sum()) - \
                            ((scores >= t) & (truth == 0)).sum() / max(1, (truth == 0).sum())
                        if j > best:
                            best, best_t = float(j), float(t)
                    thresholds[k] = best_t
                    per_class[c]["threshold"] = best_t
            head.thresholds.copy_(thresholds)
        aucs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
        results["heads"][name] = {"trained_classes": [c for k, c in enumerate(classes) if bool(assessed[k])],
                                  "macro_auroc_val": float(np.mean(aucs)) if aucs else None,
                                  "per_class": per_class, "loss_curve": curve[:: max(1, len(curve) // 50)],
                                  "final_loss": curve[-1] if curve else None}
        log.info("classifier %s: %d trained classes, val macro AUROC %s", name,
                 len(results["heads"][name]["trained_classes"]), results["heads"][name]["macro_auroc_val"])
    return results


__all__ = ["train_classifier", "masked_loss", "auroc", "prior_logits", "pooled_features"]


# ====================================================================================================== v5: probe
# A linear probe on the rich pooling of the embedding the mask decoder reads (MultiLabelHead kind 1), trained on
# the patient split of the NIH images (training.findings_data), calibrated per class on validation (Platt), with the
# evidence card of core_model.findings stored in the checkpoint header.
PROBE_STAGE = "neck"  # the cached feature block the probe reads: rich_pool of the (B, 256, 64, 64) embedding
# the parts of MultiLabelHead.rich_pool (7 × 256 columns): mean, max, std (256 each), the 4 quadrant means (1024)
POOL_BLOCKS = {"mean": (0, 256), "max": (256, 512), "std": (512, 768), "quad": (768, 1792)}


def block_columns(blocks: tuple[str, ...]) -> torch.Tensor:
    """The rich_pool columns of ``blocks`` (e.g. ("mean", "quad")) as an index tensor; the probe's weights on the
    other columns are 0."""
    return torch.cat([torch.arange(*POOL_BLOCKS[b]) for b in blocks])


def standardiser(features: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) training features → per-dimension mean and scale (D,), (D,) (scale ≥ ``eps``)."""
    return features.mean(0), features.std(0).clamp(min=eps)


def train_probe(features: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor, loss: str = "bce",
                weight_decay: float = 1e-2, epochs: int = 300, lr: float = 1e-2, seed: int = 0,
                state_path: str | None = None, save_every: int = 50) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Full-batch AdamW on a linear layer over standardised features; returns (weight (C, D), bias (C,), loss curve).

    ``features`` (N, D) standardised; ``labels`` (N, C) 1/0/−1 (−1 masked). L2 penalty ``weight_decay·‖W‖²`` (not
    the bias). With ``state_path`` the state is saved every ``save_every`` epochs and a rerun resumes from it."""
    from pathlib import Path

    torch.manual_seed(seed)
    d = features.shape[1]
    c = labels.shape[1]
    weight = torch.zeros(c, d, requires_grad=True)
    bias = prior.clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    start, curve = 0, []
    if state_path and Path(state_path).is_file():
        state = torch.load(state_path, weights_only=False)
        with torch.no_grad():
            weight.copy_(state["weight"])
            bias.copy_(state["bias"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve = state["epoch"], list(state["curve"])
        log.info("probe: resumed at epoch %d from %s", start, state_path)
    for epoch in range(start, epochs):
        optimizer.zero_grad()
        logits = features @ weight.T + bias
        value = masked_loss(logits, labels, loss, prior) + weight_decay * weight.pow(2).sum() / c
        if not torch.isfinite(value):
            raise RuntimeError(f"probe: non-finite loss at epoch {epoch}")
        value.backward()
        optimizer.step()
        curve.append(float(value.detach()))
        if state_path and ((epoch + 1) % save_every == 0 or epoch + 1 == epochs):
            torch.save({"weight": weight.detach(), "bias": bias.detach(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1, "curve": curve}, state_path)
    return weight.detach(), bias.detach(), curve


def install_probe(head, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                  trained: torch.Tensor, prior: torch.Tensor) -> None:
    """Write a probe into a :class:`core_model.model.MultiLabelHead` (kind 1): trained classes (C,) bool get their
    weights, the others weight 0 and the CXR-LT prior logit as bias; calibration reset to identity."""
    with torch.no_grad():
        head.kind.fill_(1)
        head.feat_mean.copy_(mean)
        head.feat_scale.copy_(scale)
        head.probe.weight.copy_(torch.where(trained[:, None], weight, torch.zeros_like(weight)))
        head.probe.bias.copy_(torch.where(trained, bias, prior))
        head.calib_a.fill_(1.0)
        head.calib_b.fill_(0.0)
        head.thresholds.fill_(NEVER_SUGGESTED)


NEVER_SUGGESTED = 2.0  # the thresholds buffer of a class without an operating point (no probability reaches it)


def calibrate_head(head, val_logits: np.ndarray, val_labels: np.ndarray, trained: list[str]) -> dict[str, tuple[float, float]]:
    """Per-class Platt scaling fitted on the validation logits (N, C) / labels (N, C, −1 masked) of the trained
    classes (``core_model.findings.fit_platt``), written into ``calib_a`` / ``calib_b``; returns {class: (a, b)}."""
    from core_model.findings import fit_platt

    params = {}
    with torch.no_grad():
        for k, name in enumerate(head.classes):
            if name not in trained:
                continue
            keep = val_labels[:, k] >= 0
            a, b = fit_platt(val_logits[keep, k], val_labels[keep, k])
            head.calib_a[k], head.calib_b[k] = a, b
            params[name] = (a, b)
    return params


def findings_card(head, version: str, origin: str, label_set: str, probabilities: np.ndarray, labels: np.ndarray,
                  trained: list[str], description: str):
    """The :class:`core_model.findings.FindingsCard` of a calibrated head from its validation probabilities; also
    sets the head's ``thresholds`` to the card's operating points (``NEVER_SUGGESTED`` where there is none)."""
    from core_model.findings import FindingsCard, evaluate

    evidence, summary = evaluate(head.classes, probabilities, labels, trained=trained)
    summary["description"] = description
    with torch.no_grad():
        for k, name in enumerate(head.classes):
            point = evidence[name].operating_point
            head.thresholds[k] = NEVER_SUGGESTED if point is None else point
    return FindingsCard(name=version, kind="built-in", origin=origin, label_set=label_set, evidence=evidence,
                        validation=summary)


__all__ += ["standardiser", "train_probe", "install_probe", "calibrate_head", "findings_card", "NEVER_SUGGESTED"]


def split_samples(split: dict, samples: list[ClsSample]) -> dict[str, list[ClsSample]]:
    """{"train" | "validation" | "demo": samples} in the split file's order; every id must be present."""
    by_key = {s.key: s for s in samples}
    missing = [k for part in ("train", "validation", "demo") for k in split[part] if k not in by_key]
    if missing:
        raise ValueError(f"split ids without an image: {missing[:5]}")
    return {part: [by_key[k] for k in split[part]] for part in ("train", "validation", "demo")}


def probe_inputs(parts: dict[str, list[ClsSample]], cache, classes: tuple[str, ...], flips: bool,
                 stages: tuple[str, ...] = (PROBE_STAGE,)) -> dict:
    """Cached features and labels: train (with the flipped views appended when ``flips``), validation."""
    from training.findings_data import label_matrix, load_features

    x_train = load_features(parts["train"], cache, stages)
    y_train = label_matrix(parts["train"], classes)
    if flips:
        x_train = torch.cat([x_train, load_features(parts["train"], cache, stages, flip=True)])
        y_train = np.concatenate([y_train, y_train])
    return {"x_train": x_train, "y_train": y_train, "x_val": load_features(parts["validation"], cache, stages),
            "y_val": label_matrix(parts["validation"], classes)}


def train_findings(model, split: dict, samples: list[ClsSample], cache, version: str, origin: str,
                   loss: str = "bce", weight_decay: float = 1e-2, epochs: int = 300, lr: float = 1e-2,
                   flips: bool = False, run_dir: str | None = None, seed: int = 0,
                   label_sets: tuple[str, ...] = ("cxr-lt-26", "cxr-lt-40"),
                   blocks: tuple[str, ...] = tuple(POOL_BLOCKS)) -> dict:
    """Train, calibrate and card the v5 findings heads of ``model`` in place (kind-1 probes on the embedding's rich
    pooling); the cards go to ``model.info.extra["findings"][label_set]``. Features come from ``cache``
    (:class:`training.findings_data.FeatureCache`, filled for the split's images). Returns the metrics."""
    from pathlib import Path

    from core_model.findings import expected_calibration_error

    parts = split_samples(split, samples)
    widest = max(label_sets, key=lambda n: len(model.classifiers[n].classes))
    classes = model.classifiers[widest].classes
    data = probe_inputs(parts, cache, classes, flips)
    y_train = torch.from_numpy(data["y_train"])
    trained = [c for k, c in enumerate(classes) if (data["y_train"][:, k] == 1).any() and (data["y_train"][:, k] == 0).any()]
    mean, scale = standardiser(data["x_train"])
    prior = prior_logits(classes)
    state = str(Path(run_dir) / "probe_state.pt") if run_dir else None
    columns = block_columns(blocks)
    weight_part, bias, curve = train_probe(((data["x_train"] - mean) / scale)[:, columns], y_train, prior, loss,
                                           weight_decay, epochs, lr, seed, state)
    weight = torch.zeros(len(classes), data["x_train"].shape[1])
    weight[:, columns] = weight_part
    results = {"version": version, "loss": loss, "weight_decay": weight_decay, "epochs": epochs, "lr": lr,
               "flips": flips, "blocks": list(blocks), "n_train": len(parts["train"]), "n_validation": len(parts["validation"]),
               "trained_classes": trained, "final_loss": curve[-1], "loss_curve": curve[:: max(1, len(curve) // 50)],
               "heads": {}}
    findings = dict(model.info.extra.get("findings") or {})
    for name in label_sets:
        head = model.classifiers[name]
        index = [classes.index(c) for c in head.classes]
        mask = torch.tensor([c in trained for c in head.classes])
        install_probe(head, weight[index], bias[index], mean, scale, mask, prior[index])
        with torch.no_grad():
            raw_logits = head.logits_from_features(data["x_val"]).numpy()
        y_val = data["y_val"][:, index]
        platt = calibrate_head(head, raw_logits, y_val, trained)
        with torch.no_grad():
            calibrated = head.calibrate(torch.from_numpy(raw_logits)).numpy()
        description = (f"{len(parts['validation'])} validation images ({split['patients']['validation']} patients) "
                       f"never trained on; calibrated (Platt) on these same images")
        card = findings_card(head, version, origin, name, calibrated, y_val, trained, description)
        scored = [k for k, c in enumerate(head.classes) if card.evidence[c].auroc is not None]
        raw = 1 / (1 + np.exp(-raw_logits))
        card.validation["ece_uncalibrated"] = expected_calibration_error(raw[:, scored], y_val[:, scored])
        card.validation["mean_probability_uncalibrated"] = float(raw[:, scored][y_val[:, scored] >= 0].mean())
        findings[name] = card.to_dict()
        results["heads"][name] = {"validation": card.validation, "platt": platt,
                                  "operating_points": {c: e.operating_point for c, e in card.evidence.items()
                                                       if e.operating_point is not None}}
        log.info("findings %s: validation macro AUROC %.3f (%.3f–%.3f), ECE %.3f → %.3f", name,
                 card.validation.get("macro_auroc", float("nan")), card.validation.get("macro_auroc_low", float("nan")),
                 card.validation.get("macro_auroc_high", float("nan")), card.validation["ece_uncalibrated"],
                 card.validation.get("ece", float("nan")))
    model.info.extra["findings"] = findings
    model.info.classifier_trained = {n: True for n in label_sets}
    model.info.extra.setdefault("trained_classes", {}).update({n: [c for c in model.classifiers[n].classes
                                                                   if c in trained] for n in label_sets})
    return results


__all__ += ["split_samples", "probe_inputs", "train_findings"]
