"""The image encoder and the mask decoder run by ONNX Runtime on the CPU: the fast inference backend.

Each part is exported once per set of weights (seconds for the decoder, ~30 s for the encoder; cached on disk by a
hash of the weights) and run by ONNX Runtime with its graph optimisations (fused attention, layer norm and GELU
kernels). The prompt encoder stays in PyTorch: it is cheap, and its point embedding does not export cleanly.
Outputs equal PyTorch's to ~1e-5 (tested). Sessions read their weights when built: rebuild after loading others.
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


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


class _OnnxPart:
    """An exported module and its ONNX Runtime session (CPU)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]

    def __init__(self, module: torch.nn.Module, threads: int | None = None, cache_dir: str | Path | None = None):
        import onnxruntime as ort

        folder = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "biascare-onnx"
        self.path = folder / f"{self.name}_{_weights_digest(module)}.onnx"
        if not self.path.is_file():
            self._export(module)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _export(self, module: torch.nn.Module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: shape checks traced as constants, batch-safe here
            torch.onnx.export(self._exportable(module).eval(), self._example(), str(tmp), dynamo=False,
                              opset_version=17, input_names=list(self.inputs), output_names=list(self.outputs),
                              dynamic_axes=self.dynamic_axes)
        tmp.replace(self.path)

    def _exportable(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def _example(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def run(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        feed = {name: _numpy(t) for name, t in zip(self.inputs, tensors)}
        return [torch.from_numpy(out) for out in self.session.run(None, feed)]


class OnnxMaskDecoder(_OnnxPart):
    """Callable like :meth:`BatchedMaskDecoder.predict_masks` (dynamic batch and number of prompt tokens)."""

    name = "mask_decoder"
    inputs = ("image_embeddings", "image_pe", "sparse", "dense")
    outputs = ("masks", "iou")
    dynamic_axes = {"image_embeddings": {0: "batch"}, "sparse": {0: "batch", 1: "tokens"}, "dense": {0: "batch"},
                    "masks": {0: "batch"}, "iou": {0: "batch"}}

    def _exportable(self, module: torch.nn.Module) -> torch.nn.Module:
        return _RawDecoder(module)

    def _example(self) -> tuple[torch.Tensor, ...]:
        grid = torch.zeros(1, EMBED_DIM, EMBED_GRID, EMBED_GRID)
        return grid, grid, torch.zeros(1, 3, EMBED_DIM), grid

    def __call__(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                 dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.run(image_embeddings, image_pe, sparse, dense)
        return masks, iou


class OnnxImageEncoder(_OnnxPart):
    """Callable like the TinyViT encoder: (B, 3, 256, 256) → (B, 256, 64, 64).

    TinyViT's window reshapes trace the batch size as a constant, so the graph takes one image and a batch is run
    image by image (on the CPU a batch brings no throughput anyway)."""

    name = "image_encoder"
    inputs = ("images",)
    outputs = ("embeddings",)
    dynamic_axes: dict[str, dict[int, str]] = {}

    def _example(self) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, 3, 256, 256),)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.run(image[None])[0] for image in images])
