"""Exports from a real study database: results (CSV/Parquet), iMRMC, masks (PNG/NIfTI/DICOM-SEG/COCO), manifests."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from annotations_db import export
from annotations_db.importers import import_dicom, import_nifti
from annotations_db.store import Store
from tests.db_helpers import REPO_ROOT, seed_cases

# direct identifiers in the real DICOM sources: GCP file's PatientID/Name, NEMA RG1's name, ID and birth date
IDENTIFIERS = ("Covid0000", "CompressedSamples", "9RG1", "19400305", "16d7f894-55d7-4d95")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """A study with 2 readers × 4 cases × 2 arms, predictions, events, answers and masks on real images."""
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'study.sqlite'}"
    store = Store.open(url)
    cases = seed_cases(store, shared_data, root / "seed", count=4)
    import_dicom(store, shared_data / "cxr_dicom", "dicom", progress=False)
    import_nifti(store, shared_data / "ct_nifti", "ct", progress=False)
    readers = [store.create_reader("ada", "pw", "admin"), store.create_reader("rui", "pw")]
    for k, case in enumerate(cases):
        store.record_prediction(case.id, "medsam-v1", {"Cardiomegaly": 0.2 + 0.2 * k, "Edema": 0.9}, None,
                                {"aleatoric": 0.1, "epistemic": 0.05 * k})
    store.create_study("pilot", cases, readers, design="crossover", washout_days=0, model_version="medsam-v1")
    for r, reader in enumerate(readers):
        for view in store.assignments_for(reader, include_locked=True):
            store.log_event(view, reader, "case_shown")
            if view.shows_ai:
                store.log_event(view, reader, "ai_shown")
            for c in range(r + 1):
                store.log_event(view, reader, "click", {"x": 10 + c, "y": 20, "positive": True, "latency_ms": 40})
            store.save_annotation(view, reader, {"Cardiomegaly": view.order % 2, "Edema": 1},
                                  confidence={"Cardiomegaly": view.order * 10, "Edema": 50})
    masks = _annotate_masks(store, readers[1], shared_data)
    yield {"store": store, "url": url, "cases": cases, "readers": readers, "root": root, "masks": masks}
    store.close()


def _annotate_masks(store: Store, reader, shared_data: Path) -> dict:
    """Free (non-study) annotations with masks on a PNG, the six DICOMs and the CT."""
    from annotations_db.models import Case
    from sqlalchemy import select
    with store.read_session() as session:
        cases = list(session.scalars(select(Case).order_by(Case.id)))
    chosen = [cases[0]] + [c for c in cases if c.format == "dicom"] + [c for c in cases if c.format == "nifti"]
    masks = {}
    for case in chosen:
        if case.depth is None:
            mask = np.zeros((case.height, case.width), np.uint8)
            mask[case.height // 4: case.height // 2, case.width // 5: case.width // 2] = 1
            slice_index = None
        else:
            mask = np.zeros((case.height, case.width), np.uint8)  # one displayed axial slice (H, W) = (J, I)
            from core_model.io import load_volume
            shape = load_volume(case.source_uri).slice(60).pixels.shape
            mask = np.zeros(shape, np.uint8)
            mask[30:60, 40:70] = 1
            slice_index = 60
        store.log_event(case.id, reader, "case_shown")
        store.log_event(case.id, reader, "click", {"x": 5, "y": 6, "positive": True})
        store.log_event(case.id, reader, "click", {"x": 7, "y": 8, "positive": False})
        store.log_event(case.id, reader, "undo")
        store.log_event(case.id, reader, "click", {"x": 9, "y": 9, "positive": True})
        store.save_annotation(case.id, reader, {"Pneumothorax": 1}, mask=mask, slice_index=slice_index,
                              model_version="medsam-v1")
        masks[case.pseudo_id] = (case, mask)
    return masks


def test_results_frame_has_the_agreed_columns_and_one_row_per_read_and_class(world: dict) -> None:
    frame = export.results_frame(world["url"])
    assert list(frame.columns) == export.RESULT_COLUMNS
    assert len(frame) == 2 * 4 * 2 * 26  # readers × cases × arms × CXR-LT-26 classes
    assert not frame.duplicated(["reader", "case", "arm", "class"]).any()
    unaided, aided = frame[frame.arm == "unaided"], frame[frame.arm == "ai_aided"]
    assert unaided["ai_probability"].isna().all()
    assert aided.loc[aided["class"] == "Edema", "ai_probability"].eq(0.9).all()
    assert set(frame["answer"].unique()) <= {0, 1}
    cardio = frame[frame["class"] == "Cardiomegaly"]
    assert set(cardio["truth"].dropna().unique()) <= {0, 1} and cardio["truth"].notna().any()
    assert frame.loc[frame["class"] == "Fracture", "truth"].isna().all()  # NIH has no Fracture label: empty
    assert (frame.groupby("reader")["clicks"].first().to_dict()) == {"ada": 1, "rui": 2}
    assert (frame["time_s"] > 0).all() and frame["ai_uncertainty"].notna().all()
    assert set(frame["sex"]) <= {"M", "F"} and frame["age"].notna().all()
    assert not any(str(v) in {c.pseudo_id for c in world["cases"]} for v in frame["reader"])
    assert frame["case"].isin([c.pseudo_id for c in world["cases"]]).all()


def test_results_csv_and_parquet_round_trip(world: dict, tmp_path: Path) -> None:
    csv_path, parquet_path = export.export_results(world["store"], tmp_path / "results")
    from_csv, from_parquet = pd.read_csv(csv_path), pd.read_parquet(parquet_path)
    assert list(from_csv.columns) == list(from_parquet.columns) == export.RESULT_COLUMNS
    assert len(from_csv) == len(from_parquet) == 2 * 4 * 2 * 26
    pd.testing.assert_frame_equal(from_parquet, export.results_frame(world["store"]))
    import csv
    with open(csv_path, newline="") as handle:
        raw = list(csv.DictReader(handle))
    assert all(row["ai_probability"] == "" for row in raw if row["arm"] == "unaided")
    assert all(row["truth"] == "" for row in raw if row["class"] == "Fracture")


def test_imrmc_file_follows_the_reference_layout(world: dict, tmp_path: Path, shared_data: Path) -> None:
    path = export.export_imrmc(world["store"], tmp_path / "cardio.imrmc", "Cardiomegaly")
    ours = path.read_text().splitlines()
    reference = (shared_data / "mrmc_vandyke" / "vandyke_ratings.imrmc").read_text().splitlines()
    assert [line.split(":")[0] for line in ours[1:6]] == [line.split(":")[0] for line in reference[1:6]]
    header = dict(line.split(":") for line in ours[1:5])
    data = [line.split(",") for line in ours[6:]]
    truth = [d for d in data if d[0] == "-1"]
    reads = [d for d in data if d[0] != "-1"]
    assert int(header["N0"]) + int(header["N1"]) == len(truth)
    assert int(header["NR"]) == 2 and int(header["NM"]) == 2
    assert all(d[2] == "truth" and d[3] in ("0", "1") for d in truth)
    assert len(reads) == 2 * 2 * len(truth)
    scores = [float(d[3]) for d in reads]  # confidences were recorded (order × 10): they are the scores
    assert max(scores) > 1 and all(score % 10 == 0 for score in scores)


def test_masks_are_written_at_source_geometry(world: dict, tmp_path: Path, shared_data: Path) -> None:
    result = export.export_masks(world["url"], tmp_path / "out")
    for pseudo, (case, mask) in world["masks"].items():
        files = result["masks"][pseudo]
        if case.depth is None:
            png = np.asarray(Image.open(files["png"]))
            assert png.shape == (case.height, case.width) and np.array_equal(png > 0, mask > 0)
        else:
            image = nib.load(files["nifti"])
            source = nib.load(case.source_uri)
            assert image.shape == source.shape and np.allclose(image.affine, source.affine)
            from core_model.io import load_volume
            volume = load_volume(case.source_uri)
            back = volume.volume_mask_to_slice(np.asarray(image.dataobj) > 0, 60)
            assert np.array_equal(back, mask > 0) and int(np.asarray(image.dataobj).sum()) == int(mask.sum())


def test_dicom_seg_references_the_source_instance_and_is_deidentified(world: dict, tmp_path: Path) -> None:
    deid = export.Deidentifier()
    result = export.export_masks(world["store"], tmp_path / "out", formats=("dicom-seg",), deid=deid)
    segs = [(pseudo, files["dicom-seg"]) for pseudo, files in result["masks"].items() if "dicom-seg" in files
            and world["masks"][pseudo][0].format == "dicom"]  # a NIfTI volume's SEG is on derived planes
    assert len(segs) == 6
    for pseudo, path in segs:
        case, mask = world["masks"][pseudo]
        source = pydicom.dcmread(case.source_uri)
        seg = pydicom.dcmread(path)
        assert seg.Modality == "SEG"
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert referenced == deid.uids.mapping[source.SOPInstanceUID] != source.SOPInstanceUID
        assert str(seg.PatientID) == pseudo and seg.get("PatientBirthDate", "") == ""
        _assert_no_identifiers(path, source)
        decoded = np.asarray(seg.pixel_array).reshape(mask.shape)
        assert np.array_equal(decoded > 0, mask > 0)


def _assert_no_identifiers(path: Path, source: pydicom.Dataset) -> None:
    blob = Path(path).read_bytes()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber"):
        value = str(source.get(keyword, "") or "").strip()
        if len(value) >= 4:
            assert value.encode() not in blob, f"{keyword} {value!r} leaked into {path}"
    for identifier in IDENTIFIERS:
        assert identifier.encode() not in blob


def test_coco_json_decodes_to_the_same_masks(world: dict, tmp_path: Path) -> None:
    result = export.export_masks(world["store"], tmp_path / "out", formats=("png", "coco"))
    document = json.loads(Path(result["coco"]).read_text())
    images = {image["id"]: image for image in document["images"]}
    assert len(document["annotations"]) == 7  # the 2-D cases: one PNG, six DICOM
    for annotation in document["annotations"]:
        image = images[annotation["image_id"]]
        pseudo = image["file_name"].split(".")[0]
        _, mask = world["masks"][pseudo]
        segmentation = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        assert np.array_equal(coco_mask.decode(segmentation), mask)
        assert annotation["area"] == int(mask.sum()) and [image["height"], image["width"]] == list(mask.shape)


def test_training_manifest_datalist_and_images_are_deidentified(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "training"
    manifest_path = export.export_training(world["store"], out)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["schema"] == export.MANIFEST_SCHEMA
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines == manifest["items"]
    items = {item["case_id"]: item for item in manifest["items"]}
    for pseudo in world["masks"]:
        item = items[pseudo]
        assert (out / item["image"]).exists() and (out / item["mask"]).exists()
        assert item["clicks"] == [{"x": 5.0, "y": 6.0, "positive": True, "t": item["clicks"][0]["t"]},
                                  {"x": 9.0, "y": 9.0, "positive": True, "t": item["clicks"][1]["t"]}]
        assert 0 <= item["clicks"][0]["t"] <= item["clicks"][1]["t"]
        assert item["labels"] == {"Pneumothorax": 1} and item["model_version"] == "medsam-v1"
        assert pseudo in item["image"]
    study_items = [i for i in manifest["items"] if i["case_id"] not in world["masks"]]
    assert all(i["mask"] is None and i["labels"] for i in study_items)
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == len(world["masks"])
    assert all((out / d["image"]).exists() and (out / d["label"]).exists() for d in datalist["training"])
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(identifier.encode() in blob for identifier in IDENTIFIERS), path
    for dicom_copy in (out / "images").glob("*.dcm"):
        copy = pydicom.dcmread(dicom_copy)
        assert copy.PatientID == dicom_copy.name.split(".")[0] and copy.get("PatientBirthDate", "") == ""


def test_cli_export_writes_every_format(world: dict, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "launch.py", "export", *args, "--db", world["url"]], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
    assert run("results", str(tmp_path / "r" / "results")).returncode == 0
    assert (tmp_path / "r" / "results.csv").exists() and (tmp_path / "r" / "results.parquet").exists()
    assert run("imrmc", str(tmp_path / "fx.imrmc"), "--class", "Fracture").returncode == 2  # NIH: no Fracture truth
    assert run("imrmc", str(tmp_path / "cm.imrmc"), "--class", "Cardiomegaly").returncode == 0
    done = run("training", str(tmp_path / "t"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t" / "manifest.json").exists() and (tmp_path / "t" / "coco.json").exists()
