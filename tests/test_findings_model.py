"""The built-in findings classifier (v5 on): the shipped card, calibrated outputs, triage's suggestion rule, the
segmentation pathway left as it was, the training function on a small real subset, and the patient split."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "assets" / "model" / "biascare_lite.safetensors"
SPLIT = REPO_ROOT / "assets" / "model" / "findings_split.json"
DEMO = REPO_ROOT / "assets" / "demo" / "images" / "nih"
LABEL_SETS = ("cxr-lt-26", "cxr-lt-40")


@pytest.fixture(scope="module")
def shipped():
    from core_model.model import build_model

    torch.set_num_threads(1)
    return build_model()


@pytest.fixture(scope="module")
def demo_pass(shipped):
    """Two of the app's real demo CXRs: model inputs (2, 3, 256, 256) and the training feature extractor's output."""
    from core_model.io import load_image
    from core_model.preprocess import to_model_input
    from training.findings_data import stage_features

    names = sorted(DEMO.glob("*.png"))[:2]
    batch = torch.cat([to_model_input(load_image(p).pixels)[0] for p in names])
    return batch, stage_features(shipped.image_encoder, batch)


@pytest.fixture(scope="module")
def demo_embeddings(demo_pass):
    """Image embeddings (2, 256, 64, 64) of the two demo CXRs."""
    return demo_pass[1]["embedding"]


def test_training_features_are_the_heads_own_pooling_of_the_encoders_embedding(shipped, demo_pass):
    batch, features = demo_pass
    with torch.inference_mode():
        embedding = shipped.encode_image(batch)
    assert torch.allclose(features["embedding"], embedding, atol=1e-5)
    head = shipped.classifiers["cxr-lt-26"]
    assert torch.allclose(features["neck"], head.rich_pool(embedding), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(head.calibrate(head.logits_from_features(features["neck"])),
                              shipped.classify(embedding), atol=1e-5)


def _previous_checkpoint() -> Path | None:
    """The last committed checkpoint file that differs from the shipped one (v4 for v5), via git; None without git."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return None
    log = subprocess.run(["git", "log", "--format=%H", "--", "assets/model/biascare_lite.safetensors"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    shipped = SHIPPED.read_bytes()
    for commit in log.stdout.split()[:3] if log.returncode == 0 else []:
        blob = subprocess.run(["git", "show", f"{commit}:assets/model/biascare_lite.safetensors"], cwd=REPO_ROOT,
                              capture_output=True, check=False)
        if blob.returncode == 0 and blob.stdout != shipped:
            out = REPO_ROOT / "test-artifacts" / "previous_checkpoint.safetensors"
            out.parent.mkdir(exist_ok=True)
            out.write_bytes(blob.stdout)
            return out
    return None


def test_shipped_card_has_validated_classes_with_intervals_and_operating_points(shipped):
    from core_model.findings import MIN_VALIDATION, NOT_TRAINED, SUGGESTION_FLOOR, VALIDATED

    for label_set in LABEL_SETS:
        head, card = shipped.classifiers[label_set], shipped.findings_card(label_set)
        assert card.kind == "built-in" and card.name == shipped.info.version and card.label_set == label_set
        assert card.origin and card.validation["images"] > 0 and 0 <= card.validation["ece"] <= 1
        trained = set(shipped.info.extra["trained_classes"][label_set])
        validated = [e for e in card.evidence.values() if e.status == VALIDATED]
        assert validated, "no class validated"
        for k, name in enumerate(head.classes):
            ev = card.evidence[name]
            if name not in trained:
                assert ev.status == NOT_TRAINED and ev.operating_point is None
            if ev.status == VALIDATED:
                assert ev.auroc_low > 0.5 and ev.auroc_low <= ev.auroc <= ev.auroc_high
                assert ev.n_pos >= MIN_VALIDATION and ev.n_neg >= MIN_VALIDATION
                assert ev.operating_point >= SUGGESTION_FLOOR
                assert float(head.thresholds[k]) == pytest.approx(ev.operating_point, abs=1e-6)
            else:
                assert ev.operating_point is None and float(head.thresholds[k]) > 1.0  # never suggested


def test_calibrated_outputs_follow_the_stored_platt_parameters(shipped, demo_embeddings):
    for label_set in LABEL_SETS:
        head = shipped.classifiers[label_set]
        with torch.no_grad():
            probs = shipped.classify(demo_embeddings, label_set)
            logits = head(demo_embeddings)
        assert probs.shape == (2, len(head.classes))
        assert bool(((probs > 0) & (probs < 1)).all())
        expected = torch.sigmoid(head.calib_a * logits + head.calib_b)
        assert torch.allclose(probs, expected, atol=1e-6)
        changed = (head.calib_a != 1) | (head.calib_b != 0)
        assert bool(changed.any()), "no class calibrated"
        raw = torch.sigmoid(logits)
        assert bool(((probs - raw).abs()[:, changed] > 1e-6).any())
        assert torch.allclose(probs[:, ~changed], raw[:, ~changed], atol=1e-6)


def test_triage_suggests_by_the_card_rule(shipped, demo_embeddings):
    from core_model.triage import Triage

    card = shipped.findings_card("cxr-lt-26")
    points = {c: e.operating_point for c, e in card.evidence.items() if e.operating_point is not None}
    for result in Triage(shipped, encoder_backend="torch").run_embeddings(demo_embeddings):
        assert result.suggested == card.suggested(result.probabilities)
        assert result.suggested == [c for c in card.evidence if c in points and result.probabilities[c] >= points[c]]
        margin = min(abs(result.probabilities[c] - t) for c, t in points.items())
        assert result.class_uncertainty["min_margin"] == pytest.approx(margin, abs=1e-6)


def test_a_release_changes_one_pathway_and_keeps_the_image_encoder(shipped):
    """Against the previous shipped checkpoint: the image encoder is the same (embedding caches and the findings heads
    trained on its embeddings stay valid), and either the segmentation pathway (v5: new findings heads) or the findings
    heads (v6: clicks on many structures) are unchanged."""
    from safetensors.torch import load_file

    from core_model.model import build_model

    previous = _previous_checkpoint()
    if previous is None:
        pytest.skip("no git history to read the previous checkpoint from")
    old, new = load_file(str(previous)), load_file(str(SHIPPED))
    assert SHIPPED.stat().st_size < 30 * 2**20

    def same(keys: list[str]) -> bool:
        return all(k in new and old[k].dtype == new[k].dtype and torch.equal(old[k], new[k]) for k in keys)

    encoder = [k for k in old if k.startswith("image_encoder.")]
    segmentation = [k for k in old if not k.startswith(("classifiers.", "image_encoder."))]
    heads = [k for k in old if k.startswith("classifiers.")]
    assert encoder and same(encoder)
    assert sorted(encoder + segmentation) == sorted(k for k in new if not k.startswith("classifiers."))
    assert same(segmentation) or same(heads)
    before = build_model(previous)
    assert before.encoder_version == shipped.encoder_version  # embedding caches stay valid
    # an older checkpoint has no calibration: identity, and the legacy head layout
    assert int(before.classifiers["cxr-lt-26"].kind) in (0, 1)
    if "classifiers.cxr-lt-26.calib_a" not in old:
        assert bool((before.classifiers["cxr-lt-26"].calib_a == 1).all())


def test_findings_training_runs_on_a_small_real_subset(shared_data, tmp_path):
    from core_model.findings import FindingsCard
    from core_model.model import build_model
    from training.findings_train import build_parser, run

    split = json.loads(SPLIT.read_text())
    small = {p.stem for p in (shared_data / "nih_cxr14_train256" / "images").glob("*.png")}
    tiny = dict(split, train=[k for k in split["train"] if k in small][:3],
                validation=[k for k in split["validation"] if k in small][:3])
    (tmp_path / "split.json").write_text(json.dumps(tiny))
    checkpoint = tmp_path / "out.safetensors"
    args = build_parser().parse_args(["--name", "findings_test", "--init", str(SHIPPED), "--split",
                                      str(tmp_path / "split.json"), "--shared", str(shared_data), "--cache",
                                      str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"), "--epochs", "20",
                                      "--export", str(checkpoint)])
    results = run(args)
    assert (tmp_path / "runs" / "findings_test" / "probe_state.pt").is_file()
    assert results["heads"]["cxr-lt-26"]["validation"]["images"] == 3
    model = build_model(checkpoint)
    card = model.findings_card("cxr-lt-40")
    assert isinstance(card, FindingsCard) and card.name == "findings_test" and len(card.evidence) == 40
    assert {e.status for e in card.evidence.values()} <= {"validated", "not validated", "not trained"}
    assert set(results["trained_classes"]) == {c for c, e in card.evidence.items() if e.status != "not trained"}
    assert int(model.classifiers["cxr-lt-40"].kind) == 1
    # resume: 20 epochs, then 20 more from the saved probe state = 40 epochs straight (features now cached)
    common = ["--init", str(SHIPPED), "--split", str(tmp_path / "split.json"), "--shared", str(shared_data),
              "--cache", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"), "--epochs", "40"]
    resumed = run(build_parser().parse_args(["--name", "findings_test", "--resume", *common]))
    straight = run(build_parser().parse_args(["--name", "findings_straight", *common]))
    assert len(resumed["loss_curve"]) == len(straight["loss_curve"])
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)


def test_split_is_patient_disjoint_and_keeps_the_demo_images_out_of_training(shared_data):
    from training.findings_data import DEMO_IMAGES, all_samples

    split = json.loads(SPLIT.read_text())
    full, small = all_samples(shared_data)
    patient = {s.key: s.group for s in full + small}
    groups = {part: {patient[k] for k in split[part]} for part in ("train", "validation", "demo")}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["demo"] and not groups["validation"] & groups["demo"]
    assert set(patient) == set(split["train"]) | set(split["validation"]) | set(split["demo"])
    for name in DEMO_IMAGES:
        assert (DEMO / f"{name}.png").is_file()
        assert name in split["demo"] and patient[name] in groups["demo"]
    assert set(split["demo"]) <= {s.key for s in full}  # full-resolution images only
    assert 35 <= len(split["demo"]) <= 45
    share = len(groups["validation"]) / (len(groups["validation"]) + len(groups["train"]))
    assert 0.2 <= share <= 0.25
    for part in ("demo", "validation"):
        listed = (REPO_ROOT / "assets" / "model" / f"findings_{part}_ids.txt").read_text().split()
        assert listed == split[part]
