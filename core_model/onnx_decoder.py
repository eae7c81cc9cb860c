"""The mask decoder run by ONNX Runtime on the CPU: the click path's fast backend.

The two-way transformer and the upscaling head are exported once per set of weights (a few seconds; cached on disk by
weight hash) and run by ONNX Runtime with its graph optimisations (fused attention, layer norm and GELU kernels). The
prompt encoder stays in PyTorch: it is cheap, and its point embedding does not export cleanly. Outputs equal the
PyTorch decoder's to ~1e-5 (tested).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from core_model.model import EMBED_DIM, EMBED_GRID, BatchedMaskDecoder


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _RawDecoder(torch.nn.Module):
    """All four mask tokens' logits (B, 4, 256, 256) and IoU estimates (B, 4), as ``predict_masks`` gives them."""

    def __init__(self, decoder: BatchedMaskDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse, dense):
        return self.decoder.predict_masks(image_embeddings, image_pe, sparse, dense)


def _weights_digest(decoder: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(decoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_decoder(decoder: BatchedMaskDecoder, path: Path) -> Path:
    """Write ``decoder`` as ONNX (dynamic batch and number of prompt tokens) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(1, EMBED_DIM, EMBED_GRID, EMBED_GRID), torch.zeros(1, EMBED_DIM, EMBED_GRID, EMBED_GRID),
               torch.zeros(1, 3, EMBED_DIM), torch.zeros(1, EMBED_DIM, EMBED_GRID, EMBED_GRID))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: batch-safe here
        torch.onnx.export(_RawDecoder(decoder).eval(), example, str(tmp), dynamo=False, opset_version=17,
                          input_names=["image_embeddings", "image_pe", "sparse", "dense"],
                          output_names=["masks", "iou"],
                          dynamic_axes={"image_embeddings": {0: "batch"}, "sparse": {0: "batch", 1: "tokens"},
                                        "dense": {0: "batch"}, "masks": {0: "batch"}, "iou": {0: "batch"}})
    tmp.replace(path)
    return path


class OnnxMaskDecoder:
    """Callable like :meth:`BatchedMaskDecoder.predict_masks`, on CPU tensors, through ONNX Runtime."""

    def __init__(self, decoder: BatchedMaskDecoder, threads: int | None = None, cache_dir: str | Path | None = None):
        import onnxruntime as ort

        folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "biascare-onnx"
        path = folder / f"mask_decoder_{_weights_digest(decoder)}.onnx"
        if not path.is_file():
            export_decoder(decoder, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                 dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {"image_embeddings": _numpy(image_embeddings), "image_pe": _numpy(image_pe),
                "sparse": _numpy(sparse), "dense": _numpy(dense)}
        masks, iou = self.session.run(None, feed)
        return torch.from_numpy(masks), torch.from_numpy(iou)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
