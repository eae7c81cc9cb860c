"""The image encoder and the mask decoder run by ONNX Runtime on the CPU: the fast inference backend.

Each part is exported once per set of weights (seconds for the decoder, ~30 s for the encoder; cached on disk by a
hash of the weights) and run by ONNX Runtime with its graph optimisations (fused attention, layer norm and GELU
kernels). The prompt encoder stays in PyTorch: it is cheap, and its point embedding does not export cleanly.
Outputs equal PyTorch's to ~1e-5 (tested). Sessions read their weights when built: rebuild after loading others.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from core_model.model import EMBED_DIM, EMBED_GRID, BatchedMaskDecoder, BiasCareModel


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


def default_cache_dir() -> Path:
    """Where exported graphs live when no folder is given: the user's cache (``$XDG_CACHE_HOME/biascare/onnx``,
    else ``~/.cache/biascare/onnx``), private to the user (0700) — a graph is code the process runs, so never a
    world-writable folder such as /tmp; shared by every app, test and benchmark of that user (files are named by a
    hash of the weights)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = root / "biascare" / "onnx"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


class _OnnxPart:
    """An exported module and its ONNX Runtime session (CPU)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]

    def __init__(self, module: torch.nn.Module, threads: int | None = None, cache_dir: str | Path | None = None):
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = folder / f"{self.name}_{_weights_digest(module)}.onnx"
        if not self.path.is_file():
            self._export(module)
        self.threads = threads or torch.get_num_threads()
        self.session = self._session(self.threads)

    def _session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("BIASCARE_ORT_SPIN", "0") != "1":
            # idle pool threads sleep at once instead of spinning: on a 2-core machine a spinning thread takes the
            # core that the Python code around the run (and every other process) needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _export(self, module: torch.nn.Module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unique per process *and* thread: two predictors of one app may export the same graph at once
        tmp = self.path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
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
    image by image (on the CPU a batch brings no throughput anyway). ONNX Runtime's pool threads are created with
    the session and inherit the creating thread's scheduling priority: build it in the thread that will run it (a
    niced background thread gets niced pool threads)."""

    name = "image_encoder"
    inputs = ("images",)
    outputs = ("embeddings",)
    dynamic_axes: dict[str, dict[int, str]] = {}

    _throughput = None  # the single-threaded session of batches, built on the first one
    side_by_side = True  # False: a batch runs image after image on all the threads (the benchmark's baseline)

    def _example(self) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, 3, 256, 256),)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One image: a run on all the threads (the latency of a case being opened). Several: one single-threaded run
        per thread at a time, side by side — the encoder's many small operators (GELU, layer norms, window
        reshapes) do not split well across threads, whole images do (2.9–3.0 vs 2.7–2.8 images/s on 2 cores)."""
        if len(images) == 1 or self.threads == 1 or not self.side_by_side:
            return torch.cat([self.run(image[None])[0] for image in images])
        if self._throughput is None:
            self._throughput = self._session(1)
        feeds = [{self.inputs[0]: _numpy(image[None])} for image in images]
        with ThreadPoolExecutor(min(self.threads, len(images)), thread_name_prefix="biascare-encoder") as pool:
            outputs = list(pool.map(lambda feed: self._throughput.run(None, feed)[0], feeds))
        return torch.cat([torch.from_numpy(out) for out in outputs])


def _block_heads(x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """(T, D) per-token vectors → (D, H·T) block-diagonal: column h·T + t holds head h's slice of token t, zeros
    elsewhere. ``heads`` is the (D, H) one-hot head of each channel. Lets one plain matmul score every head."""
    return (x.transpose(0, 1)[:, None, :] * heads[:, :, None]).reshape(x.shape[1], -1)


class _ClickGraph(torch.nn.Module):
    """One click's prompt-to-logits pass (batch 1) rewritten for the CPU, the same function as
    ``prompt_encoder`` (mask prompt) + ``BatchedMaskDecoder.predict_masks``, up to float rounding (logits within
    ~4e-5 of PyTorch's on real CXRs):

    * image tokens stay channels-last (N = 64·64 rows): no NCHW ↔ token transposes of the (N, 256) image;
    * what depends only on the image (its embedding, the fixed positional encoding, the dense prompt's constant part)
      is computed once per image (:meth:`image_constants`), in per-head layout: the first layer's three image
      projections are linear in the image tokens, and the mask prompt enters them only through the 16 channels before
      the mask encoder's last 1×1 convolution, so per click they cost an (N × 16) @ (16 × d) product per head;
    * in the second layer and the final attention the image-side projections are folded into the few prompt
      tokens' side (``q·(x Wk) = (q Wk)·x``, ``A (x Wv) = (A x) Wv``, ``(x Wq)·k = x·(Wq k)``): (H·T × 256)
      products instead of (N × 256) @ (256 × 128) ones while the prompt has fewer than ~16 tokens;
    * the image→token attention folds its output projection into the values (``sum_h A_h (v_h Wo_h)``);
    * the two transposed 2×2 convolutions of the upscaling are matmuls on sub-pixel rows (layer norm over 64
      contiguous channels), and the pixels are put in place once, on the 4 mask channels at the end.
    """

    def __init__(self, model: BiasCareModel) -> None:
        super().__init__()
        decoder, prompt = model.mask_decoder, model.prompt_encoder
        transformer = decoder.transformer
        self.layers = transformer.layers
        self.final = transformer.final_attn_token_to_image
        self.norm_final = transformer.norm_final_attn
        self.hyper = decoder.output_hypernetworks_mlps
        self.iou_head = decoder.iou_prediction_head
        self.mask_down = torch.nn.Sequential(*list(prompt.mask_downscaling)[:-1])  # up to the 16-channel features
        last = prompt.mask_downscaling[-1]
        with torch.no_grad():
            self.register_buffer("output_tokens", torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight],
                                                            dim=0).detach().clone())
            pe = model.dense_pe().detach().reshape(EMBED_DIM, -1).transpose(0, 1).contiguous()  # (N, 256)
            w3 = last.weight.detach().reshape(EMBED_DIM, -1).transpose(0, 1).contiguous()  # (16, 256)
            first = self.layers[0]
            self.register_buffer("no_mask", prompt.no_mask_embed.weight.detach().reshape(-1).clone())
            self.register_buffer("b3", last.bias.detach().clone())
            self.register_buffer("pe", pe)
            self.register_buffer("w3", w3)
            cross = first.cross_attn_token_to_image
            self.heads, self.internal = cross.num_heads, cross.internal_dim
            per_head = self.internal // self.heads
            # first layer's image projections (token→image k and v, image→token q): (256, H, d) each
            self.register_buffer("w1", self._cat_weight(first).reshape(EMBED_DIM, 3, self.heads, per_head))
            self.register_buffer("b1", self._cat_bias(first).reshape(3, self.heads, 1, per_head))
            # their mask-prompt part, per click: (N, 16) @ (H, 16, d) → (H, N, d)
            self.register_buffer("g1", torch.einsum("ci,ikhd->khcd", w3, self.w1).contiguous())
            self.register_buffer("out_heads", torch.stack([
                a.out_proj.weight.detach().T.reshape(self.heads, per_head, EMBED_DIM).contiguous()
                for a in (first.cross_attn_image_to_token, self.layers[1].cross_attn_image_to_token)]))
            up1, norm, _, up2, _ = decoder.output_upscaling
            self.register_buffer("u1", up1.weight.detach().permute(0, 2, 3, 1).reshape(up1.in_channels, -1).clone())
            self.register_buffer("ub1", up1.bias.detach().repeat(4))
            self.register_buffer("n_w", norm.weight.detach().clone())
            self.register_buffer("n_b", norm.bias.detach().clone())
            self.norm_eps = float(norm.eps)
            self.channels = (int(up1.out_channels), int(up2.out_channels))
            self.register_buffer("u2", up2.weight.detach().permute(0, 2, 3, 1).reshape(up2.in_channels, -1).clone())
            self.register_buffer("ub2", up2.bias.detach().repeat(4))
            onehot = (torch.arange(self.internal)[:, None] // per_head == torch.arange(self.heads)[None]).float()
            self.register_buffer("onehot", onehot)  # (D, H)
            self.scale = 1.0 / float(per_head) ** 0.5

    @staticmethod
    def _cat_weight(layer) -> torch.Tensor:
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        return torch.cat([t2i.k_proj.weight.T, t2i.v_proj.weight.T, i2t.q_proj.weight.T], dim=1).detach().contiguous()

    @staticmethod
    def _cat_bias(layer) -> torch.Tensor:
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        return torch.cat([t2i.k_proj.bias, t2i.v_proj.bias, i2t.q_proj.bias]).detach().clone()

    def image_constants(self, embedding: torch.Tensor, masked: bool) -> tuple[torch.Tensor, ...]:
        """(1, 256, 64, 64) embedding → what the click pass needs of it: the image tokens plus the dense prompt's
        constant part (N, 256), and the first layer's image projections with it, (H, N, d) each (k, v, q)."""
        tokens = embedding[0].reshape(EMBED_DIM, -1).transpose(0, 1).float() + (self.b3 if masked else self.no_mask)
        with_pe = tokens + self.pe
        k = torch.einsum("nc,chd->hnd", with_pe, self.w1[:, 0]) + self.b1[0]
        v = torch.einsum("nc,chd->hnd", tokens, self.w1[:, 1]) + self.b1[1]
        q = torch.einsum("nc,chd->hnd", with_pe, self.w1[:, 2]) + self.b1[2]
        return tokens.contiguous(), k.contiguous(), v.contiguous(), q.contiguous()

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) → (H, T, d)."""
        return x.reshape(x.shape[0], self.heads, -1).transpose(0, 1)

    def _token_to_image_heads(self, attn, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (T, 256) attend to the image, whose k and v are given per head (H, N, d)."""
        q = self._split_heads(torch.nn.functional.linear(q_tok, attn.q_proj.weight, attn.q_proj.bias) * self.scale)
        weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (H, T, N)
        out = (weights @ v).transpose(0, 1).reshape(q_tok.shape[0], -1)  # (T, D)
        return torch.nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    def _image_to_token_heads(self, attn, out_heads: torch.Tensor, q: torch.Tensor, k_tok: torch.Tensor,
                              v_tok: torch.Tensor) -> torch.Tensor:
        """The image, its q given per head (H, N, d), attends to the prompt tokens (T, 256); returns (N, 256), the
        output projection folded into the values: sum_h A_h (v_h Wo_h)."""
        k = self._split_heads(torch.nn.functional.linear(k_tok, attn.k_proj.weight, attn.k_proj.bias) * self.scale)
        v = self._split_heads(torch.nn.functional.linear(v_tok, attn.v_proj.weight, attn.v_proj.bias))
        weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (H, N, T)
        values = (v @ out_heads).reshape(-1, out_heads.shape[-1])  # (H·T, 256)
        return weights.transpose(0, 1).reshape(q.shape[1], -1) @ values + attn.out_proj.bias

    def _token_to_image_raw(self, attn, q_tok: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor):
        """As :meth:`_token_to_image` with the image's k/v projections folded into the few prompt tokens' side:
        ``q·(x Wk + bk) = (q Wk) x + q·bk`` (the last term is constant along the softmax: dropped) and
        ``A (x Wv + bv) = (A x) Wv + bv`` (rows of A sum to 1). ``image_k``: keys + PE, ``image_v``: keys (N, 256)."""
        q = torch.nn.functional.linear(q_tok, attn.q_proj.weight, attn.q_proj.bias) * self.scale
        qbd = _block_heads(q, self.onehot).transpose(0, 1)  # (H·T, D)
        weights = torch.softmax((qbd @ attn.k_proj.weight) @ image_k.transpose(0, 1), dim=-1)  # (H·T, N)
        out = torch.nn.functional.linear(weights @ image_v, attn.v_proj.weight, attn.v_proj.bias)  # (H·T, D)
        out = (out.reshape(self.heads, -1, self.internal) * self.onehot.transpose(0, 1)[:, None, :]).sum(dim=0)
        return torch.nn.functional.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    def _image_to_token_raw(self, attn, image_q: torch.Tensor, k_tok: torch.Tensor, v_tok: torch.Tensor):
        """As :meth:`_image_to_token` with the image's q projection folded into the tokens' keys:
        ``(x Wq + bq)·k = x (Wq k) + bq·k``. ``image_q``: keys + PE (N, 256)."""
        k = torch.nn.functional.linear(k_tok, attn.k_proj.weight, attn.k_proj.bias) * self.scale
        kbd = _block_heads(k, self.onehot)  # (D, H·T)
        scores = (image_q @ (attn.q_proj.weight.transpose(0, 1) @ kbd) + attn.q_proj.bias @ kbd)
        weights = torch.softmax(scores.reshape(image_q.shape[0], self.heads, -1), dim=-1).reshape(image_q.shape[0], -1)
        v = self._split_heads(torch.nn.functional.linear(v_tok, attn.v_proj.weight, attn.v_proj.bias))
        values = (v @ self.out_heads[1]).reshape(-1, EMBED_DIM)  # (H·T, 256), rows (head, token) as the weights
        return weights @ values + attn.out_proj.bias

    def forward(self, image_tokens, k1, v1, q1, sparse, mask_logits, has_mask, allowed):
        h = self.mask_down(mask_logits)[0].reshape(self.w3.shape[0], -1).transpose(0, 1) * has_mask  # (N, 16)
        out_tokens = torch.cat([self.output_tokens, sparse[0]], dim=0)  # (T, 256)
        query_pe = out_tokens
        first, second = self.layers
        # layer 1 (no positional term in its self-attention, as in the stock model)
        queries = first.norm1(first.self_attn(q=out_tokens[None], k=out_tokens[None], v=out_tokens[None])[0])
        queries = first.norm2(queries + self._token_to_image_heads(first.cross_attn_token_to_image, queries + query_pe,
                                                                   k1 + h @ self.g1[0], v1 + h @ self.g1[1]))
        queries = first.norm3(queries + first.mlp(queries))
        keys = image_tokens + h @ self.w3
        keys = first.norm4(keys + self._image_to_token_heads(first.cross_attn_image_to_token, self.out_heads[0],
                                                             q1 + h @ self.g1[2], queries + query_pe, queries))
        # layer 2
        q = (queries + query_pe)[None]
        queries = second.norm1(queries + second.self_attn(q=q, k=q, v=queries[None])[0])
        with_pe = keys + self.pe
        queries = second.norm2(queries + self._token_to_image_raw(second.cross_attn_token_to_image,
                                                                  queries + query_pe, with_pe, keys))
        queries = second.norm3(queries + second.mlp(queries))
        keys = second.norm4(keys + self._image_to_token_raw(second.cross_attn_image_to_token, with_pe,
                                                            queries + query_pe, queries))
        # final attention of the tokens to the image
        queries = self.norm_final(queries + self._token_to_image_raw(self.final, queries + query_pe, keys + self.pe,
                                                                     keys))
        # upscaling on sub-pixel rows: (N, 2·2·64) → (4N, 64) → (4N, 2·2·32) → (16N, 32)
        up = (keys @ self.u1 + self.ub1).reshape(-1, self.channels[0])
        up = torch.nn.functional.gelu(torch.nn.functional.layer_norm(up, (self.channels[0],), self.n_w, self.n_b,
                                                                     self.norm_eps))
        up = torch.nn.functional.gelu((up @ self.u2 + self.ub2).reshape(-1, self.channels[1]))
        # only the chosen mask is formed and put in place: the best predicted IoU among the allowed mask tokens
        iou = self.iou_head(queries[0])[None]  # (1, 4)
        best = torch.argmax(iou + allowed, dim=1)  # (1,)
        hyper = torch.stack([mlp(queries[1 + i]) for i, mlp in enumerate(self.hyper)], dim=1)  # (32, 4)
        grid = EMBED_GRID
        mask = (up @ torch.index_select(hyper, 1, best)).reshape(grid, grid, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)
        return mask.reshape(1, 1, 4 * grid, 4 * grid), iou, best


class OnnxClickDecoder(_OnnxPart):
    """The per-click pass of one image (batch 1) by ONNX Runtime: sparse prompt tokens + the previous low-res logits
    → the chosen mask's logits (1, 1, 256, 256), all four IoU estimates (1, 4) and the chosen mask token, as
    ``model.decode``'s prompt encoder (its mask path) and ``predict_masks`` give them (the choice: the best IoU of
    token 0, or of tokens 1–3 for a multimask pass; only that mask is formed). The image's constants
    (:meth:`_ClickGraph.image_constants`) are computed once per embedding and kept for the last few images."""

    name = "click_decoder_v4"  # the graph's revision: the cache key is the weights', so a new graph needs a new name
    inputs = ("image_tokens", "k1", "v1", "q1", "sparse", "mask_logits", "has_mask", "allowed")
    outputs = ("mask", "iou", "best")
    dynamic_axes = {"sparse": {1: "tokens"}}
    keep_images = 2

    def __init__(self, model: BiasCareModel, threads: int | None = None, cache_dir: str | Path | None = None):
        self.graph = _ClickGraph(model).eval()
        self._constants: list[tuple[torch.Tensor, dict[bool, tuple[np.ndarray, ...]]]] = []
        self._no_mask = np.zeros((1, 1, 4 * EMBED_GRID, 4 * EMBED_GRID), np.float32)
        # added to the IoU estimates before the argmax: token 0 alone, or tokens 1-3 (SAM's multimask output)
        self._allowed = {False: np.array([[0, -1e9, -1e9, -1e9]], np.float32),
                         True: np.array([[-1e9, 0, 0, 0]], np.float32)}
        super().__init__(self.graph, threads=threads, cache_dir=cache_dir)

    def _example(self) -> tuple[torch.Tensor, ...]:
        n, g = EMBED_GRID * EMBED_GRID, self.graph
        heads = torch.zeros(g.heads, n, g.internal // g.heads)
        return (torch.zeros(n, EMBED_DIM), heads, heads, heads, torch.zeros(1, 3, EMBED_DIM),
                torch.zeros(1, 1, 4 * EMBED_GRID, 4 * EMBED_GRID), torch.ones(1), torch.from_numpy(self._allowed[False]))

    def image_constants(self, embedding: torch.Tensor, masked: bool) -> tuple[np.ndarray, ...]:
        """The image's per-click constants (with the mask prompt's or the no-mask constant), kept for the last
        ``keep_images`` embeddings (by identity: the predictor's cache hands out the same tensor)."""
        for index, (known, constants) in enumerate(self._constants):
            if known is embedding:
                self._constants.insert(0, self._constants.pop(index))
                break
        else:
            self._constants.insert(0, (embedding, {}))
            del self._constants[self.keep_images:]
        constants = self._constants[0][1]
        if masked not in constants:
            with torch.inference_mode():
                parts = self.graph.image_constants(embedding.detach().to("cpu", torch.float32), masked)
            constants[masked] = tuple(t.numpy() for t in parts)
        return constants[masked]

    def __call__(self, embedding: torch.Tensor, sparse: torch.Tensor | np.ndarray, mask_logits: torch.Tensor | None,
                 multimask: bool = False) -> tuple[np.ndarray, float]:
        """The chosen mask's logits (1, 1, 256, 256) and its IoU estimate."""
        masked = mask_logits is not None
        tokens, k1, v1, q1 = self.image_constants(embedding, masked)
        feed = {"image_tokens": tokens, "k1": k1, "v1": v1, "q1": q1,
                "sparse": sparse if isinstance(sparse, np.ndarray) else _numpy(sparse),
                "mask_logits": _numpy(mask_logits) if masked else self._no_mask,
                "has_mask": np.ones(1, np.float32) if masked else np.zeros(1, np.float32),
                "allowed": self._allowed[multimask]}
        mask, iou, best = self.session.run(None, feed)
        return mask, float(iou[0, int(best[0])])


class PromptTokens:
    """The prompt encoder's sparse embedding (points with SAM's padding point, box corners) in numpy, float32 — the
    same arithmetic as ``PromptEncoder._embed_points``/``_embed_boxes`` without PyTorch's operator dispatch and
    thread pool on the click path (tiny tensors: their cost there is the framework's, and a 2-thread pool on a busy
    2-core machine stalls a few-microsecond op for milliseconds)."""

    def __init__(self, prompt_encoder: torch.nn.Module) -> None:
        def vec(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().reshape(-1).copy()

        self.gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.detach().cpu().float().numpy().copy()
        self.size = tuple(int(v) for v in prompt_encoder.input_image_size)  # (h, w)
        self.not_a_point = vec(prompt_encoder.not_a_point_embed.weight)
        self.point = [vec(e.weight) for e in prompt_encoder.point_embeddings]

    def _pe(self, coords: np.ndarray) -> np.ndarray:
        c = coords.astype(np.float32, copy=True)
        c[:, 0] = c[:, 0] / np.float32(self.size[1])
        c[:, 1] = c[:, 1] / np.float32(self.size[0])
        c = np.float32(2.0) * c - np.float32(1.0)
        c = np.float32(2.0 * np.pi) * (c @ self.gaussian)
        return np.concatenate([np.sin(c), np.cos(c)], axis=-1)

    def __call__(self, coords: np.ndarray | None, labels: np.ndarray | None,
                 box: np.ndarray | None) -> np.ndarray:
        """coords (N, 2) and labels (N,) on the model grid (SAM's pixel-index convention), box (4,) → (1, T, 256)."""
        parts = []
        if coords is not None:
            points = np.asarray(coords, np.float32).reshape(-1, 2) + np.float32(0.5)
            labels = np.asarray(labels).reshape(-1)
            if box is None:
                points = np.concatenate([points, np.zeros((1, 2), np.float32)])
                labels = np.concatenate([labels, [-1]])
            embedding = self._pe(points)
            embedding[labels == -1] = self.not_a_point
            embedding[labels == 0] += self.point[0]
            embedding[labels == 1] += self.point[1]
            parts.append(embedding)
        if box is not None:
            corners = self._pe(np.asarray(box, np.float32).reshape(2, 2) + np.float32(0.5))
            corners[0] += self.point[2]
            corners[1] += self.point[3]
            parts.append(corners)
        if not parts:
            return np.zeros((1, 0, self.not_a_point.shape[0]), np.float32)
        return np.concatenate(parts)[None]


class OnnxMaskResize:
    """Low-res logits (1, 1, h, w) → bool mask of any size: bilinear (half-pixel centres, edge-clamped: PyTorch's
    ``interpolate(..., mode="bilinear", align_corners=False)``) and ``> 0`` in one ONNX Runtime call (its thread pool,
    no PyTorch operators on the click path)."""

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Resize", ["logits", "", "", "sizes"], ["resized"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Greater", ["resized", "zero"], ["mask"])],
            "mask_resize",
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, "h", "w"]),
             helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
            [helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 1, "H", "W"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        sizes = np.array([1, 1, int(shape[0]), int(shape[1])], np.int64)
        return self.session.run(None, {"logits": np.ascontiguousarray(logits, np.float32), "sizes": sizes})[0][0, 0]
