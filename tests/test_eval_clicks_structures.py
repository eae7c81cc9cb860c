"""Cross-structure evaluation (``eval-structures``) and the CT structure dataset (``prepare-ct-structures``) on the real
CT of ct_nifti/ (TotalSegmentator's multilabel mask) and the real CXRs of cxr_lungs/."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT

CT = "ct_nifti"
HELDOUT_CXR = [line.strip() for line in (REPO_ROOT / "assets" / "model" / "heldout_images.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="session")
def ct_volume(shared_data):
    from training.structures import load_ct_and_labels

    return load_ct_and_labels(shared_data / CT / "example_ct.nii.gz",
                              shared_data / CT / "example_ct_totalseg104_multilabel.nii.gz")


def _label_png(out: Path, image: str) -> np.ndarray:
    return np.array(Image.open(out / "labels" / image.replace(".png", "_labels.png")))


def test_slices_are_the_volumes_voxels_through_the_display_transform(ct_slices, ct_volume):
    out, summary = ct_slices
    volume, labels = ct_volume
    axis = summary["axis"]
    assert summary["plane"] == "axial" and summary["n_slices"] == volume.num_slices(axis)
    for item in summary["items"]["heldout"][::7]:
        index, value = item["index"], item["label"]
        shown = _label_png(out, item["image"]) == value
        expected = volume.volume_mask_to_slice(labels == value, index, axis)  # the app's display transform
        assert np.array_equal(shown, expected), item
        assert shown.sum() == item["voxels"]
        image = np.array(Image.open(out / "images" / item["image"]))
        pixels = volume.slice(index, axis=axis, window="abdomen").pixels
        assert np.array_equal(image, np.round(pixels * 255).astype(np.uint8))


def test_slices_show_the_patient_the_radiological_way(ct_slices, shared_data):
    """Patient's left on the image right, anterior at the top: spleen right of the liver, aorta above the spine."""
    out, _ = ct_slices
    label_map = json.loads((shared_data / CT / "label_map_totalseg_v1.json").read_text())
    names = {name: int(value) for value, name in label_map.items()}
    image = "example_ct_z084.png"
    labels = _label_png(out, image)
    rows, cols = np.indices(labels.shape)
    centre = {name: (rows[labels == names[name]].mean(), cols[labels == names[name]].mean())
              for name in ("spleen", "liver", "aorta", "vertebrae_L2")}
    assert centre["spleen"][1] > labels.shape[1] / 2 > centre["liver"][1]
    assert centre["aorta"][0] < centre["vertebrae_L2"][0]


def test_split_is_deterministic_and_disjoint(shared_data, ct_slices, tmp_path):
    from training.structures import HELD_OUT_STRUCTURES

    out, summary = ct_slices
    from training.structures import prepare

    ct = shared_data / CT
    again = prepare(ct / "example_ct.nii.gz", ct / "example_ct_totalseg104_multilabel.nii.gz",
                    ct / "label_map_totalseg_v1.json", tmp_path / "again")
    assert again == summary
    assert json.loads((tmp_path / "again" / "manifest_heldout.json").read_text()) == \
        json.loads((out / "manifest_heldout.json").read_text())
    heldout, train = set(summary["heldout_slices"]), set(summary["train_slices"])
    assert not heldout & train and len(heldout | train) == summary["n_slices"]
    assert 0.15 < len(heldout) / summary["n_slices"] < 0.3
    assert set(summary["heldout_structures"]) == set(HELD_OUT_STRUCTURES)
    assert not set(summary["heldout_structures"]) & set(summary["train_structures"])
    items = summary["items"]
    assert {i["structure"] for i in items["heldout"]} == set(HELD_OUT_STRUCTURES)
    assert all(i["image"] in heldout and i["structure"] in HELD_OUT_STRUCTURES for i in items["heldout"])
    assert all(i["image"] in heldout and i["structure"] not in HELD_OUT_STRUCTURES for i in items["heldout_slices"])
    assert all(i["image"] in train and i["structure"] not in HELD_OUT_STRUCTURES for i in items["train"])
    manifest = json.loads((out / "manifest_train.json").read_text())
    listed = {n for s in manifest["datasets"][0]["structures"] for n in s["only"]}
    assert listed <= train and "TotalSegmentator" in (out / "README.md").read_text()
    # a held-out object is labelled as a reader labels it in the app (its CT group), so its box meets the decoder the
    # app would give it: "Muscle" is a trained group (gluteus, autochthon), "Kidney" is not
    heldout_manifest = json.loads((out / "manifest_heldout.json").read_text())["datasets"][0]["structures"]
    labels = {s["name"]: s["object_label"] for s in heldout_manifest}
    assert labels["iliopsoas_left"] == "Muscle" and labels["kidney_left"] == "Kidney"
    assert labels["urinary_bladder"] == "Urinary bladder"


def _manifest(tmp_path: Path, ct_out: Path, shared_data: Path, ct_images: list[str]) -> Path:
    manifest = {"name": "two", "datasets": [
        {"name": "ct", "images": str(ct_out / "images"), "masks": str(ct_out / "labels"), "mask_suffix": "_labels.png",
         "structures": [{"name": "kidney_left", "label": 3, "only": ct_images}]},
        {"name": "cxr", "images": str(shared_data / "cxr_lungs" / "images"),
         "masks": str(shared_data / "cxr_lungs" / "masks"), "only": HELDOUT_CXR[1:3],
         "structures": [{"name": "lungs", "mask_suffix": "_lung.png"}]}]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_manifest_evaluator_compares_stock_and_checkpoint_on_the_same_objects(ct_slices, shared_data, artifacts_dir,
                                                                              tmp_path):
    from training.eval_structures import HEADLINE, main

    out, summary = ct_slices
    kidney = [i for i in summary["items"]["heldout"] if i["structure"] == "kidney_left"][:2]
    manifest = _manifest(tmp_path, out, shared_data, [i["image"] for i in kidney])
    result_path, table_path = tmp_path / "structures.json", tmp_path / "structures.md"
    rc = main(["--manifest", str(manifest), "--json", str(result_path), "--markdown", str(table_path),
               "--max-clicks", "3", "--refine-clicks", "1", "--bootstrap", "50",
               "--cache-dir", str(artifacts_dir / "training-embedding-cache")])
    assert rc == 0
    result = json.loads(result_path.read_text())
    assert [m["label"] for m in result["models"]] == ["stock", "checkpoint"]
    assert result["models"][0]["checkpoint"] == "stock" and result["models"][1]["checkpoint"] != "stock"
    assert [(e["dataset"], e["structure"]) for e in result["structures"]] == [("ct", "kidney_left"), ("cxr", "lungs")]
    assert result["same_objects"]
    for entry in result["structures"]:
        assert entry["n_images"] == 2 and entry["same_objects"]
        stock, ours = entry["models"]["stock"], entry["models"]["checkpoint"]
        assert [(o["image"], o["component"], o["pixels"]) for o in stock["objects"]] == \
            [(o["image"], o["component"], o["pixels"]) for o in ours["objects"]]
        for row in (stock, ours):
            assert row["n_images"] == 2 and row["n_objects"] == entry["n_objects"] >= 2
            assert len(row["curve"]) == 3
            for key in ("miou@1", "noc@90", "box_iou"):
                low, high = row["intervals"][key]
                assert low - 1e-9 <= row[key] <= high + 1e-9, key
    ct_objects = result["structures"][0]["models"]["stock"]["objects"]
    assert sum(o["pixels"] for o in ct_objects) == sum(i["voxels"] for i in kidney)  # one kidney per slice, all of it
    for label in ("stock", "checkpoint"):
        for key in HEADLINE:
            values = [e["models"][label][key] for e in result["structures"]]
            if key in ("miou@5", "miou@20"):  # beyond the 3 clicks run here
                assert values == [None, None] and result["overall"][label][key] is None
            else:
                assert result["overall"][label][key] == pytest.approx(np.mean(values)), key
    difference = result["differences"]["checkpoint - stock"]["overall"]
    assert difference["miou@1"] == pytest.approx(result["overall"]["checkpoint"]["miou@1"] -
                                                 result["overall"]["stock"]["miou@1"])
    table = table_path.read_text()
    for line in ("| kidney_left (ct) | 2 / ", "| lungs (cxr) | 2 / ", "| **mean over 2 structures** |"):
        assert table.count(line) == 2, line


def test_names_as_text_prompts_are_evaluated_where_the_language_pathway_is_trained(ct_slices, shared_data,
                                                                                   artifacts_dir, tmp_path):
    from training.eval_structures import main

    out, summary = ct_slices
    kidney = [i["image"] for i in summary["items"]["heldout"] if i["structure"] == "kidney_left"][:1]
    manifest = _manifest(tmp_path, out, shared_data, kidney)
    result_path = tmp_path / "text.json"
    assert main(["--manifest", str(manifest), "--json", str(result_path), "--max-clicks", "1", "--refine-clicks", "0",
                 "--no-box", "--bootstrap", "0", "--name-as-text",
                 "--cache-dir", str(artifacts_dir / "training-embedding-cache")]) == 0
    result = json.loads(result_path.read_text())
    for entry in result["structures"]:  # the shipped checkpoint's language pathway is trained, the stock one's not
        assert 0.0 <= entry["models"]["checkpoint"]["text_whole_iou"] <= 1.0, entry["structure"]
        assert entry["models"]["stock"]["text_whole_iou"] is None
    lungs = next(e for e in result["structures"] if e["structure"] == "lungs")
    assert lungs["models"]["checkpoint"]["text_whole_iou"] > 0.8  # "lungs" names what the pathway learned


def test_bad_manifests_name_the_file_and_the_cause(ct_slices, shared_data, tmp_path):
    from training.eval_structures import ManifestError, load_manifest

    out, summary = ct_slices
    image = summary["items"]["heldout"][0]["image"]

    def write(datasets) -> Path:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"datasets": datasets}))
        return path

    ct = {"name": "ct", "images": str(out / "images"), "masks": str(out / "labels"), "mask_suffix": "_labels.png"}
    with pytest.raises(ManifestError, match="images folder .*nowhere.* not found"):
        load_manifest(write([{**ct, "images": str(tmp_path / "nowhere"), "structures": [{"name": "x"}]}]))
    with pytest.raises(ManifestError, match="label 250 occurs in none"):
        load_manifest(write([{**ct, "structures": [{"name": "nothing", "label": 250, "only": [image]}]}]))
    with pytest.raises(ManifestError, match="'only' images not in"):
        load_manifest(write([{**ct, "structures": [{"name": "spleen", "label": 1, "only": ["absent.png"]}]}]))
    with pytest.raises(ManifestError, match="bad.json: cannot parse"):
        (tmp_path / "bad.json").write_text("{not json")
        load_manifest(tmp_path / "bad.json")


def test_a_mask_of_another_size_is_refused_with_its_file(ct_slices, shared_data, tmp_path):
    from core_model.errors import MaskShapeError
    from training.eval_structures import load_label_mask

    out, summary = ct_slices
    mask = out / "labels" / summary["items"]["heldout"][0]["image"].replace(".png", "_labels.png")
    with pytest.raises(MaskShapeError, match=str(mask.name)):
        load_label_mask(mask, (256, 256), 1)
    cxr_mask = shared_data / "cxr_lungs" / "masks" / f"{Path(HELDOUT_CXR[0]).stem}_lung.png"
    with pytest.raises(MaskShapeError, match="does not match image shape"):
        load_label_mask(cxr_mask, (7, 7), None)


def test_limits_pick_images_spread_over_the_structure(ct_slices):
    from training.eval_structures import ManifestError, parse_limits, spread

    _, summary = ct_slices
    slices = sorted(i["image"] for i in summary["items"]["heldout"] if i["structure"] == "iliopsoas_left")
    picked = spread(slices, 3)  # the structure is on all 24 held-out slices: one pick in each held-out band
    assert picked[0] == slices[0] and picked[-1] == slices[-1]
    assert len({int(name[-7:-4]) // summary["slice_split"]["band"] for name in picked}) == 3
    assert spread(slices, 3) == picked and spread(slices, None) == slices
    assert parse_limits(["4", "ct_heldout=3"]) == {"": 4, "ct_heldout": 3}
    with pytest.raises(ManifestError, match="--limit 'ct=0'"):
        parse_limits(["ct=0"])
