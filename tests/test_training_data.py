"""Training data sources on real files: folders, the exported manifest (incl. bad input), NIfTI slices, CXR-LT CSV."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from training.data import (DataError, SkipLog, check_sample, cxrlt_samples, folder_samples, manifest_samples,
                           nifti_samples, read_manifest, split_by_group)

SMALL = "12941_2020_358_Fig1_HTML"  # smallest real CXR of cxr_lungs (fast to load)


def _small_images(shared_data, n=3):
    images = sorted((shared_data / "cxr_lungs" / "images").iterdir(), key=lambda p: p.stat().st_size)[:n]
    return [(p, shared_data / "cxr_lungs" / "masks" / f"{p.stem}_lung.png") for p in images]


def test_folder_split_by_patient(shared_data):
    skips = SkipLog()
    samples = folder_samples(shared_data / "cxr_lungs", "_lung.png", skips)
    assert len(samples) == 61 and skips.total == 0
    train, held = split_by_group(samples, 0.2, seed=0)
    assert 10 <= len(held) <= 14 and len(train) + len(held) == 61
    assert not {s.group for s in train} & {s.group for s in held}  # no patient on both sides
    assert split_by_group(samples, 0.2, seed=0)[1] == held  # deterministic
    pixels, mask = check_sample(held[0], skips)
    assert pixels.dtype == np.float32 and mask.shape == pixels.shape and mask.any()


def test_manifest_with_bad_items(shared_data, tmp_path):
    pairs = _small_images(shared_data, 2)
    for image, mask in pairs:
        shutil.copy(image, tmp_path / image.name)
        shutil.copy(mask, tmp_path / mask.name)
    good_image, good_mask = pairs[0][0].name, pairs[0][1].name
    w, h = Image.open(pairs[0][0]).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "empty_mask.png")
    Image.fromarray(np.full((h // 2, w // 2), 255, np.uint8)).save(tmp_path / "small_mask.png")
    items = [
        {"image": good_image, "mask": good_mask, "clicks": [{"x": 10, "y": 20, "positive": True, "t": 0.5}],
         "labels": {"Cardiomegaly": 1}, "model_version": "v0", "case_id": "good", "split": "train"},
        {"image": "missing.png", "mask": good_mask, "case_id": "missing-image", "split": "train"},
        {"image": good_image, "mask": "missing_mask.png", "case_id": "missing-mask", "split": "train"},
        {"image": good_image, "mask": None, "case_id": "no-mask", "split": "train"},
        {"image": good_image, "mask": "empty_mask.png", "case_id": "empty", "split": "train"},
        {"image": good_image, "mask": "small_mask.png", "case_id": "wrong-size", "split": "train"},
        {"image": pairs[1][0].name, "mask": pairs[1][1].name, "case_id": "test-item", "split": "test"},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"items": items}))
    skips = SkipLog()
    samples = manifest_samples(manifest, skips)
    assert [s.key for s in samples] == ["good", "empty", "wrong-size"]  # files exist; contents checked on load
    assert skips.counts["manifest points to a missing file"] == 2 and skips.counts["image without mask"] == 1
    loaded = [check_sample(s, skips) for s in samples]
    assert loaded[0] is not None and loaded[1] is None and loaded[2] is None
    assert skips.counts["empty mask"] == 1 and skips.counts["mask size differs from image"] == 1
    assert skips.total == 5 and samples[0].clicks[0]["x"] == 10 and samples[0].labels == {"Cardiomegaly": 1}
    # JSON Lines and a plain list read the same
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    assert len(read_manifest(tmp_path / "m.jsonl")) == len(items)
    (tmp_path / "m2.json").write_text(json.dumps(items))
    assert len(manifest_samples(tmp_path / "m2.json", SkipLog(), splits=None)) == 4
    # strict mode: the first bad item is an error naming it
    with pytest.raises(DataError, match="missing-image|missing"):
        manifest_samples(manifest, SkipLog(strict=True))
    with pytest.raises(DataError, match="not found"):
        manifest_samples(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest"):
        read_manifest(tmp_path / "broken.json")


def test_a_labelled_object_of_an_exported_answer_trains_under_its_own_label(shared_data, tmp_path):
    """An answer's labelled objects (manifest ``object``) are named and phrased by their label — the heart never as
    "left lung" — and not flipped; an unlabelled mask stays the lungs' (sides by centroid, flipped)."""
    from core_model.model import build_model
    from training.cache import SIDE_PHRASES, EmbeddingCache, prepare_images, trained_labels

    image, mask = _small_images(shared_data, 1)[0]
    for path in (image, mask):
        shutil.copy(path, tmp_path / path.name)
    items = [{"image": image.name, "mask": mask.name, "case_id": "c1", "split": "train"},
             {"image": image.name, "mask": mask.name, "case_id": "c1", "split": "train",
              "object": {"id": 1, "label": "Heart / cardiomediastinum"}},
             {"image": image.name, "mask": mask.name, "case_id": "c1", "split": "train",
              "object": {"id": 2, "label": "Left lung"}}]
    (tmp_path / "manifest.json").write_text(json.dumps({"items": items}))
    samples = manifest_samples(tmp_path / "manifest.json")
    assert [(s.key, s.object_label) for s in samples] == [
        ("c1", None), ("c1#object-1", "Heart / cardiomediastinum"), ("c1#object-2", "Left lung")]
    model = build_model(None)
    prepared = prepare_images(samples, model, EmbeddingCache(tmp_path / "cache", model.encoder_version), SkipLog(),
                              flip=True)
    by_key = {}
    for item in prepared:
        by_key.setdefault(item.key.split("#flip")[0], []).append(item)
    assert len(by_key["c1"]) == 2, "the unlabelled lungs are flipped as before"
    assert {o.label for o in by_key["c1"][0].objects} == {"left lung", "right lung", "lungs"}
    for key, label, phrases in (("c1#object-1", "Heart / cardiomediastinum",
                                 ("heart / cardiomediastinum", "the heart / cardiomediastinum")),
                                ("c1#object-2", "Left lung", SIDE_PHRASES["left"])):
        (only,) = by_key[key]  # no flipped copy: it would turn a left lung into a right one
        assert only.objects and all(o.label == label and o.phrases == phrases and o.kind == "component"
                                    for o in only.objects)
    assert {"Heart / cardiomediastinum", "Left lung"} <= trained_labels(prepared)


def test_folder_counts_images_without_masks(shared_data, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    pairs = _small_images(shared_data, 2)
    for image, mask in pairs:
        shutil.copy(image, tmp_path / "images" / image.name)
    shutil.copy(pairs[0][1], tmp_path / "masks" / pairs[0][1].name)
    skips = SkipLog()
    samples = folder_samples(tmp_path, "_lung.png", skips)
    assert len(samples) == 1 and skips.counts["image without mask"] == 1
    with pytest.raises(DataError, match="no image has a mask"):
        folder_samples(tmp_path, "_other.png", SkipLog())


def test_nifti_slices_where_the_mask_is_present(shared_data):
    ct = shared_data / "ct_nifti"
    skips = SkipLog()
    samples = nifti_samples(ct / "example_ct.nii.gz", ct / "example_ct_lung_mask.nii.gz", min_pixels=50, skips=skips)
    assert len(samples) == 9 and skips.counts["mask slice below min_pixels"] == 2
    pixels, mask = samples[-1].load()
    assert pixels.shape == mask.shape and mask.sum() > 500 and 0 <= pixels.min() and pixels.max() <= 1
    lobes = nifti_samples(ct / "example_ct.nii.gz", ct / "example_ct_totalseg104_multilabel.nii.gz",
                          labels=(13, 14, 15, 16, 17), min_pixels=50)
    assert len(lobes) >= len(samples)


def test_cxrlt_csv_blank_is_masked(shared_data):
    csv_path = shared_data / "nih_cxr14_sample" / "labels_cxrlt2024_format.csv"
    samples, classes = cxrlt_samples(csv_path)
    assert len(classes) == 40 and len(samples) == 142
    values = np.array([[s.labels[c] for c in classes] for s in samples])
    assessed = (values >= 0).any(0)
    assert assessed.sum() == 15  # 14 NIH findings + "No Finding" → Normal; the other 25 columns are blank
    assert set(np.unique(values[:, ~assessed])) == {-1}
    assert values[:, classes.index("Pleural Effusion")].max() == 1


def test_augmented_variant_moves_image_and_mask_together(shared_data):
    from skimage.transform import resize

    from training.augment import random_variant, variant_rng

    sample = folder_samples(shared_data / "cxr_lungs")[0]
    pixels, mask = check_sample(sample, SkipLog())
    # the mask drawn as an image must come out where the augmented mask is (same geometric transform)
    image_of_mask, warped = random_variant(mask.astype(np.float32), mask, variant_rng(sample.key, 0))
    again, warped_again = random_variant(mask.astype(np.float32), mask, variant_rng(sample.key, 0))
    assert np.array_equal(image_of_mask, again) and np.array_equal(warped, warped_again)  # deterministic
    drawn = image_of_mask > 0.5
    assert (drawn & warped).sum() / (drawn | warped).sum() > 0.99
    scale = max(mask.shape) / max(warped.shape)  # transformed at ≤ 1024 px
    assert 0.7 < warped.sum() * scale ** 2 / mask.sum() < 1.3
    unmoved = resize(mask.astype(np.float32), warped.shape, order=1) > 0.5
    assert (unmoved & warped).sum() / (unmoved | warped).sum() < 0.97  # it did move
    other, _ = random_variant(pixels, mask, variant_rng(sample.key, 1))
    assert other.dtype == np.float32 and 0.0 <= other.min() and other.max() <= 1.0
