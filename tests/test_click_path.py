"""The click path's pieces that #19 changed: the mask layer as row runs, and the language tokens cached per text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.render import decode_layer_png, decode_mask_runs, encode_mask_png, encode_mask_runs


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1024, :1024]
    lungs = ((xx - 300) ** 2 / 150 ** 2 + (yy - 500) ** 2 / 350 ** 2 < 1) | \
            ((xx - 700) ** 2 / 150 ** 2 + (yy - 500) ** 2 / 350 ** 2 < 1)
    return [lungs, np.zeros((7, 5), bool), np.ones((3, 9), bool), rng.random((40, 61)) < 0.4]


@pytest.mark.parametrize("index", range(4))
def test_mask_runs_round_trip_and_agree_with_the_png_layer(index):
    mask = _masks()[index]
    data = encode_mask_runs(mask)
    values = np.frombuffer(data, "<u2")
    assert (values[0], values[1]) == (mask.shape[1], mask.shape[0])
    runs = values[2:].reshape(-1, 3)
    assert int((runs[:, 2] - runs[:, 1]).sum()) == int(mask.sum())  # runs cover exactly the mask
    assert (decode_mask_runs(data) == mask).all()
    assert ((decode_layer_png(encode_mask_png(mask)) > 0) == mask).all()


def test_language_tokens_are_cached_per_text_until_the_weights_change():
    from core_model.language import LanguagePathway

    pathway = LanguagePathway().eval()
    torch.nn.init.normal_(pathway.projection.weight)
    with torch.inference_mode():
        first = pathway.tokens(["lung", "heart"])
        again = pathway.tokens(["heart", "lung"])
    assert torch.equal(first[0], again[1]) and torch.equal(first[1], again[0])
    with torch.no_grad():
        pathway.projection.weight.mul_(2.0)  # an optimiser step or load_state_dict writes in place
    with torch.inference_mode():
        changed = pathway.tokens(["lung"])
    fresh = pathway._tokens(["lung"]).detach()
    assert torch.allclose(changed, fresh) and not torch.allclose(changed, first[:1])
    pathway.train()
    assert pathway.tokens(["lung"]).requires_grad  # training never sees the cache
