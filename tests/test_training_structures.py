"""Training on many structures at once (issue 16) on the real CT of ct_nifti/ and real NIH CXRs: the structure
samples read only train structures on train slices, their objects are named components, the data engine's targets
are the stock model's own box answers and never cover a held-out structure, and a run with both trains."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

NIH_TRAIN_STEM = "00000001_000"  # in the findings split's train list (never a demo or validation image)


def test_structure_samples_are_train_structures_on_train_slices(ct_slices):
    from training.data import structure_samples
    from training.structures import SliceSplit

    out, summary = ct_slices
    samples = structure_samples(out)
    split = SliceSplit(**summary["slice_split"])
    train_names = set(summary["train_structures"])
    assert len(samples) == len({item["image"] for item in summary["items"]["train"]})
    for sample in samples:
        index = int(Path(sample.key).stem.rsplit("_z", 1)[1])
        assert not split.is_heldout(index), sample.key
        assert set(sample.structures.values()) <= train_names
        assert not set(sample.structures.values()) & set(summary["heldout_structures"])
    assert {name for s in samples for name in s.structures.values()} == train_names


def test_structure_objects_are_named_components_and_never_a_heldout_structure(ct_slices):
    from core_model.geometry import ResizePad
    from training.cache import structure_objects, structure_phrases
    from training.data import SkipLog, check_sample, structure_samples

    out, summary = ct_slices
    heldout_values = {item["label"] for item in summary["items"]["heldout"]}
    samples = structure_samples(out)
    checked = 0
    for sample in samples[::6]:
        pixels, labels = check_sample(sample, SkipLog())
        present_heldout = np.isin(labels, list(heldout_values))
        geometry = ResizePad(*labels.shape)
        objects = structure_objects(labels, sample.structures, geometry)
        assert objects and all(o.kind == "component" for o in objects)
        assert {o.phrases for o in objects} <= {structure_phrases(n) for n in sample.structures.values()}
        heldout_grid = geometry.mask_to_model(torch.from_numpy(present_heldout)[None, None])[0, 0] > 0.5
        for obj in objects:  # a target never covers a held-out structure (model-grid resampling aside)
            assert int((obj.mask & heldout_grid).sum()) <= 0.02 * int(obj.mask.sum())
        checked += int(present_heldout.any())
    assert checked > 0, "no checked slice had a held-out structure on it: the check above checked nothing"
    assert structure_phrases("kidney_left") == ("left kidney", "the left kidney")
    assert structure_phrases("vertebrae_L1") == ("vertebrae L1", "the vertebrae L1")


@pytest.fixture(scope="module")
def stock():
    from core_model.model import build_model

    return build_model(None)


def test_data_engine_targets_are_the_stock_box_answers_and_avoid_heldout_structures(ct_slices, stock, artifacts_dir):
    from core_model.geometry import ResizePad
    from training.cache import EmbeddingCache
    from training.data import SkipLog, check_sample, structure_samples
    from training.data_engine import EngineConfig, engine_targets, protected_region

    out, summary = ct_slices
    heldout_values = [item["label"] for item in summary["items"]["heldout"]]
    samples = [s for s in structure_samples(out)
               if np.isin(check_sample(s, SkipLog())[1], heldout_values).sum() > 2000][:1]
    assert samples, "no train slice with a large held-out structure"
    cache = EmbeddingCache(artifacts_dir / "training-embedding-cache", tag=stock.encoder_version)
    cfg = EngineConfig(boxes=24, keep=6, min_predicted_iou=0.6, min_stability=0.6, seed=3)
    targets, info = engine_targets(samples, stock, cache, cfg, SkipLog())
    kept = targets[samples[0].key]
    counts = info["counts"]
    assert counts["kept"] == len(kept) > 0
    assert sum(v for k, v in counts.items() if k not in ("candidates", "kept")) + counts["kept"] <= counts["candidates"]
    pixels, labels = check_sample(samples[0], SkipLog())
    geometry = ResizePad(*pixels.shape)
    protect = protected_region(samples[0], labels, geometry)
    heldout_grid = geometry.mask_to_model(torch.from_numpy(np.isin(labels, heldout_values))[None, None])[0, 0] > 0
    assert bool((heldout_grid & ~protect).sum() == 0)  # every held-out structure's pixel is protected
    embedding = cache.embeddings(stock, [pixels])[0].float()
    h, w = geometry.resized_shape
    for obj in kept:
        assert obj.kind == "pseudo"
        area = int(obj.mask.sum())
        assert int((obj.mask & protect).sum()) <= cfg.max_protected * area
        assert cfg.min_area * h * w <= area <= cfg.max_area * h * w
        assert not obj.mask[h:, :].any() and not obj.mask[:, w:].any()  # never in the padding
    for a in range(len(kept)):
        for b in range(a):
            inter = int((kept[a].mask & kept[b].mask).sum())
            assert inter / int((kept[a].mask | kept[b].mask).sum()) < cfg.max_overlap
    # the targets are what the stock model answers to a box: the box of the target's source gives it back
    rng = np.random.default_rng(cfg.seed)
    from training.data_engine import random_boxes

    boxes = torch.from_numpy(random_boxes((h, w), cfg, rng))
    with torch.inference_mode():
        logits, _ = stock.decode(embedding[None].expand(len(boxes), -1, -1, -1), None, boxes, None, None)
    answers = logits[:, 0] > 0
    for obj in kept:
        assert any(torch.equal(obj.mask[:h, :w], answer[:h, :w]) for answer in answers)


def test_trainer_uses_pseudo_targets_for_clicks_and_boxes_never_for_text(stock):
    from core_model.geometry import ResizePad
    from training.cache import PreparedImage, TargetObject, _box
    from training.trainer import SegTrainer, TrainConfig

    def target(y0: int, kind: str, phrases: tuple[str, ...]) -> TargetObject:
        mask = torch.zeros(256, 256, dtype=torch.bool)
        mask[y0:y0 + 40, 60:120] = True
        return TargetObject(mask, _box(mask.numpy()), phrases, kind)

    image = PreparedImage(key="k", source="s", group="g", flipped=False,
                          embedding=torch.zeros(256, 64, 64, dtype=torch.float16), geometry=ResizePad(256, 256),
                          objects=[target(20, "component", ("liver", "the liver")),
                                   target(120, "pseudo", ("object", "region"))])
    trainer = SegTrainer(stock, TrainConfig(name="eligible", runs_dir=str(REPO_ROOT / "test-artifacts"),
                                            max_steps=1), [image])
    assert trainer.eligible["click"] == [(0, 0), (0, 1)]
    assert trainer.eligible["box"] == [(0, 0), (0, 1)]
    assert trainer.eligible["text"] == [(0, 0)]


def _one_slice_folder(out: Path, dest: Path) -> Path:
    """A copy of the structure folder whose split lists the train items of one slice only."""
    split = json.loads((out / "split.json").read_text())
    first = sorted({item["image"] for item in split["items"]["train"]})[10]
    split["items"]["train"] = [i for i in split["items"]["train"] if i["image"] == first]
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "images" / first, dest / "images" / first)
    label = first.replace(".png", "_labels.png")
    shutil.copy(out / "labels" / label, dest / "labels" / label)
    (dest / "split.json").write_text(json.dumps(split))
    return dest


def test_train_cli_runs_on_structures_and_data_engine_targets(ct_slices, shared_data, artifacts_dir, tmp_path):
    from training.cli import train_main

    out, _ = ct_slices
    folder = _one_slice_folder(out, tmp_path / "ct")
    nih = tmp_path / "nih" / "images"
    nih.mkdir(parents=True)
    shutil.copy(shared_data / "nih_cxr14_train256" / "images" / f"{NIH_TRAIN_STEM}.png", nih)
    shutil.copy(shared_data / "nih_cxr14_train256" / "images" / "00000028_000.png", nih)  # validation split
    only = REPO_ROOT / "assets" / "model" / "findings_split.json"
    assert NIH_TRAIN_STEM in json.loads(only.read_text())["train"]
    cache = artifacts_dir / "training-embedding-cache"
    args = ["--name", "multi", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(cache),
            "--structures", str(folder), "--unlabelled", str(nih), "--unlabelled-only", f"{only}:train",
            "--data-engine", "3", "--engine-boxes", "8", "--modes", "click,box,text", "--mode-probs", "0.4,0.3,0.3",
            "--batch-size", "2", "--max-steps", "3", "--epochs", "1", "--steps-per-epoch", "3", "--hitl-rounds", "1",
            "--warmup-steps", "1", "--no-progress", "--val-clicks", "1"]
    assert train_main(args) == 0
    metrics = json.loads((tmp_path / "runs" / "multi" / "metrics.json").read_text())
    engine = metrics["segmentation"]["data_engine"]
    assert engine["images"] == 2 and engine["counts"]["candidates"] == 16  # the CT slice + the one listed NIH image
    split = json.loads((tmp_path / "runs" / "multi" / "split.json").read_text())
    assert any(k.endswith(f"{NIH_TRAIN_STEM}.png") for k in split["train"])
    assert not any(k.endswith("00000028_000.png") for k in split["train"])
    assert metrics["segmentation"]["train_images"] >= 1
    # the checkpoint names what its decoder trained on: the slice's structures and their groups, nothing of the
    # engine's unnamed targets; a box of anything else (a held-out structure) goes to the foundation decoder
    from core_model.model import build_model
    from training.cache import box_labels

    split_file = json.loads((folder / "split.json").read_text())
    on_slice = sorted({i["structure"] for i in split_file["items"]["train"]})
    trained = build_model(tmp_path / "runs" / "multi" / "checkpoint.safetensors")
    assert trained.box_labels and trained.box_labels <= set(box_labels(on_slice))
    assert not trained.box_labels & {"object", "region"}
    for name in split_file["heldout_structures"]:
        assert not trained.answers_boxes_for(name), name


def test_unlabelled_images_without_the_data_engine_are_refused(shared_data, tmp_path, capsys):
    from training.cli import train_main

    rc = train_main(["--name", "x", "--runs-dir", str(tmp_path), "--unlabelled",
                     str(shared_data / "nih_cxr14_train256" / "images")])
    assert rc == 2
    assert "--data-engine" in capsys.readouterr().err
    rc = train_main(["--name", "y", "--runs-dir", str(tmp_path), "--unlabelled", str(tmp_path), "--data-engine", "2",
                     "--unlabelled-only", str(tmp_path / "missing.json") + ":train"])
    assert rc == 2
    assert "missing.json" in capsys.readouterr().err


def test_reformats_cut_only_train_slabs_and_name_only_train_structures(shared_data, artifacts_dir):
    """Coronal / sagittal training cuts of the real CT: each lies inside one run of train slices (never a held-out
    band), its label PNG is the mask's own cut (checked against nibabel's array of the RAS file), and its targets are
    train structures only — what ``structure_samples`` then reads."""
    import nibabel as nib
    from PIL import Image

    from training.data import structure_samples
    from training.structures import SliceSplit, prepare_reformats, train_slabs

    ct = shared_data / "ct_nifti"
    out = artifacts_dir / "ct-reformats"
    summary = prepare_reformats(ct / "example_ct.nii.gz", ct / "example_ct_totalseg104_multilabel.nii.gz",
                                ct / "label_map_totalseg_v1.json", out, stride=8)
    split = SliceSplit(**summary["slice_split"])
    slabs = train_slabs(112, split)
    assert [z for a, b in slabs for z in range(a, b)] == [z for z in range(112) if not split.is_heldout(z)]
    labels = np.asarray(nib.load(ct / "example_ct_totalseg104_multilabel.nii.gz").dataobj).astype(np.uint8)
    assert nib.aff2axcodes(nib.load(ct / "example_ct.nii.gz").affine) == ("R", "A", "S")
    items = summary["items"]["train"]
    assert items and not summary["items"]["heldout"] and not summary["items"]["heldout_slices"]
    assert not {i["structure"] for i in items} & set(summary["heldout_structures"])
    planes = set()
    for image in sorted({i["image"] for i in items}):
        plane_index, z_range = Path(image).stem.split("_")[-2:]
        plane, index = plane_index[:-3], int(plane_index[-3:])
        start, stop = (int(z) for z in z_range[1:].split("-"))
        assert (start, stop + 1) in slabs, image
        block = labels[:, :, start:stop + 1]
        # radiological display of the RAS+ array: rows superior → inferior (−z); coronal columns patient right →
        # left (−x), sagittal columns anterior → posterior (−y)
        cut = block[::-1, index, :].T[::-1] if plane == "coronal" else block[index, ::-1, :].T[::-1]
        shown = np.asarray(Image.open(out / "labels" / image.replace(".png", "_labels.png")))
        assert np.array_equal(shown, cut), image
        for item in (i for i in items if i["image"] == image):
            assert int((shown == item["label"]).sum()) == item["voxels"] >= 30
        planes.add(plane)
    assert planes == {"coronal", "sagittal"}
    samples = structure_samples(out)
    assert len(samples) == len({i["image"] for i in items})
    assert {n for s in samples for n in s.structures.values()} == set(summary["train_structures"])
