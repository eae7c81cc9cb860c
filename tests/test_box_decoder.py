"""Which decoder answers a box (issue 16): the shipped checkpoint's own decoder for the labels it was trained on (the
lungs, the CT structures of its train split and their groups), the foundation decoder — the stock LiteMedSAM prompt
encoder and mask decoder on the checkpoint's image embedding — for every other label; clicks always go through the
checkpoint's decoder. On a real held-out CT slice (TotalSegmentator's test CT) and a real chest X-ray.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core_model.classes import ct_structure_group
from core_model.model import DEFAULT_CHECKPOINT, build_model, normalise_label
from core_model.predictor import Click, InteractivePredictor
from training.data import load_pixels
from training.eval_structures import load_label_mask


@pytest.fixture(scope="module")
def shipped():
    return build_model(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def stock_decoder_on_shipped_encoder(shipped):
    """Built independently of the routing: a stock model whose image encoder gets the shipped checkpoint's weights."""
    model = build_model(None)
    model.image_encoder.load_state_dict(shipped.image_encoder.state_dict())
    return model


def _torch_predictor(model) -> InteractivePredictor:
    return InteractivePredictor(model, decoder_backend="torch", encoder_backend="torch")


def _held_out_kidney(ct_slices):
    out, summary = ct_slices
    item = next(i for i in summary["items"]["heldout"] if i["structure"] == "kidney_left")
    pixels = load_pixels(out / "images" / item["image"])
    mask = load_label_mask(out / "labels" / item["image"].replace(".png", "_labels.png"), pixels.shape, item["label"])
    ys, xs = np.nonzero(mask)
    return pixels, mask, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def test_the_shipped_checkpoint_names_what_it_was_trained_on_and_no_held_out_structure(shipped, ct_slices):
    out, _ = ct_slices
    split = json.loads((out / "split.json").read_text())
    labels = shipped.box_labels
    assert labels is not None and {"lungs", "left lung", "right lung"} <= labels
    trained_groups = {ct_structure_group(name) for name in split["train_structures"]}
    assert {normalise_label(n) for n in split["train_structures"]} | {normalise_label(g) for g in trained_groups} \
        <= labels
    for name in split["heldout_structures"]:
        assert normalise_label(name) not in labels, name
        group = ct_structure_group(name)
        if group not in trained_groups:  # iliopsoas is held out, but other muscles were trained: "Muscle" is known
            assert not shipped.answers_boxes_for(group), group
    assert not shipped.answers_boxes_for("Heart / cardiomediastinum")
    assert shipped.answers_boxes_for(None) and shipped.answers_boxes_for("Left lung")
    assert build_model(None).answers_boxes_for("Kidney"), "the stock model answers every box with its own decoder"


def test_a_box_of_a_structure_never_trained_on_is_the_foundation_decoders_answer(
        shipped, stock_decoder_on_shipped_encoder, ct_slices):
    pixels, mask, box = _held_out_kidney(ct_slices)
    ours, reference = _torch_predictor(shipped), _torch_predictor(stock_decoder_on_shipped_encoder)
    ours.set_image(pixels)
    reference.set_image(pixels)
    expected = reference.predict(box=box)
    for label in ("Kidney", "kidney_left"):  # the app's group and the TotalSegmentator name
        ours.reset()
        answer = ours.predict(box=box, label=label)
        assert torch.equal(answer.low_res_logits, expected.low_res_logits), label
        assert answer.iou == pytest.approx(expected.iou) and answer.foundation
    ours.reset()
    own = ours.predict(box=box)  # unlabelled: the checkpoint's decoder
    assert not own.foundation and not torch.allclose(own.low_res_logits, expected.low_res_logits, atol=1e-3)
    ours.reset()
    trained = ours.predict(box=box, label="Vertebra")  # a trained label: the checkpoint's decoder, whatever the box
    assert torch.equal(trained.low_res_logits, own.low_res_logits)


def test_clicks_after_a_foundation_box_go_through_the_checkpoints_decoder(
        shipped, stock_decoder_on_shipped_encoder, ct_slices):
    pixels, mask, box = _held_out_kidney(ct_slices)
    ys, xs = np.nonzero(mask)
    click = Click(float(np.median(xs)), float(np.median(ys)), True)
    ours = _torch_predictor(shipped)
    key = ours.set_image(pixels)
    boxed = ours.predict(box=box, label="Kidney")
    refined = ours.predict(clicks=[click])
    assert boxed.foundation and not refined.foundation
    assert refined.box == box and refined.clicks == (click,)
    # the same prompts and fed-back logits through the checkpoint's decoder, by the model's own API
    embedding, geometry = ours.embedding(key)
    to_model = lambda xy: torch.as_tensor(geometry.to_model(np.asarray(xy) + 0.5) - 0.5, dtype=torch.float32)
    points = (to_model([[click.x, click.y]])[None], torch.ones(1, 1, dtype=torch.int64))
    corners = to_model(np.asarray(box).reshape(2, 2)).reshape(1, 4)
    with torch.inference_mode():
        logits, _ = shipped.decode(embedding, points, corners, boxed.low_res_logits)
        stock_logits, _ = stock_decoder_on_shipped_encoder.decode(embedding, points, corners, boxed.low_res_logits)
    assert torch.allclose(refined.low_res_logits, logits, atol=1e-4)
    assert not torch.allclose(refined.low_res_logits, stock_logits, atol=1e-3)


def test_a_lung_box_on_a_chest_x_ray_stays_the_checkpoints(shipped, shared_data):
    pixels = load_pixels(shared_data / "cxr_lungs" / "images" / "00870a9c.jpg")
    predictor = _torch_predictor(shipped)
    predictor.set_image(pixels)
    box = (250.0, 300.0, 950.0, 1600.0)
    unlabelled = predictor.predict(box=box)
    for label in ("Right lung", "Left lung", "lungs"):
        predictor.reset()
        assert torch.equal(predictor.predict(box=box, label=label).low_res_logits, unlabelled.low_res_logits)
    predictor.reset()
    heart = predictor.predict(box=box, label="Heart / cardiomediastinum")
    assert not torch.allclose(heart.low_res_logits, unlabelled.low_res_logits, atol=1e-3)
