"""Findings AI sources outside the built-in model, and the eval-findings evaluator, on real NIH images.

torchxrayvision's pretrained weights cannot be fetched here, so its adapter is tested with weights saved from the
same architecture (seeded): the file is loaded through the adapter and must give exactly what torchxrayvision's own
pipeline gives, under CXR-LT names.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core_model.classes import CXR_LT_26
from core_model.eval_findings import main as eval_findings
from core_model.io.cxrlt import FindingsTableError, UnknownColumns, read_labels, read_submission, read_thresholds
from core_model.xrv_source import XRV_TO_CXRLT, XrvSourceError, load_xrv_source
from tests.conftest import REPO_ROOT, SHARED_DATA

xrv = pytest.importorskip("torchxrayvision")
SAMPLE = SHARED_DATA / "nih_cxr14_sample"
DEMO_IDS = REPO_ROOT / "assets" / "model" / "findings_demo_ids.txt"
DEMO_IMAGE = REPO_ROOT / "assets" / "demo" / "images" / "nih" / "00004030_000.png"


@pytest.fixture(scope="module")
def xrv_weights(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    network = xrv.models.DenseNet(weights=None, num_classes=18)
    path = tmp_path_factory.mktemp("xrv") / "densenet-nih-site.pt"
    torch.save(network.state_dict(), path)
    return path


def _reference_scores(weights: Path, image: np.ndarray, weights_name: str) -> torch.Tensor:
    """torchxrayvision's documented pipeline: normalize → centre crop → resize → DenseNet with op_threshs."""
    spec = xrv.models.model_urls[weights_name]
    network = xrv.models.DenseNet(weights=None, num_classes=18, op_threshs=torch.tensor(spec["op_threshs"]))
    network.load_state_dict(torch.load(weights, weights_only=True) | {"op_threshs": network.op_threshs})
    x = xrv.datasets.normalize(image.astype(np.float32), 255)[None]
    x = xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(x))
    with torch.no_grad():
        return network.eval()(torch.from_numpy(x)[None])[0]


def test_xrv_adapter_loads_local_weights_and_maps_labels_to_cxrlt(xrv_weights):
    from PIL import Image

    image = np.asarray(Image.open(DEMO_IMAGE).convert("L"))
    source = load_xrv_source(xrv_weights, weights_name="densenet121-res224-nih")
    scores = source.predict(image)
    nih_labels = [label for label in xrv.models.model_urls["densenet121-res224-nih"]["labels"] if label]
    assert set(scores) == {XRV_TO_CXRLT[label] for label in nih_labels} and set(scores) <= set(CXR_LT_26)
    assert "Pleural Effusion" in scores and "Effusion" not in scores
    reference = _reference_scores(xrv_weights, image, "densenet121-res224-nih")
    for k, label in enumerate(xrv.models.model_urls["densenet121-res224-nih"]["labels"]):
        if label:
            assert scores[XRV_TO_CXRLT[label]] == pytest.approx(float(reference[k]), abs=1e-5)
    card = source.card()
    assert card.kind == "torchxrayvision" and xrv_weights.name in card.origin and source.sha256[:12] in card.origin
    assert set(card.shown(scores)) == set(scores)
    assert card.suggested(scores) == [c for c in card.evidence if scores[c] >= 0.5]


def test_xrv_adapter_refuses_bad_files_with_the_file_named(xrv_weights, tmp_path):
    with pytest.raises(XrvSourceError, match="not found"):
        load_xrv_source(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(XrvSourceError, match=str(junk)):
        load_xrv_source(junk)
    wrong = tmp_path / "resnet18.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(XrvSourceError, match="does not hold densenet121-res224-all"):
        load_xrv_source(wrong)
    pickled = tmp_path / "whole-model.pt"
    torch.manual_seed(7)
    torch.save(xrv.models.DenseNet(weights=None, num_classes=18), pickled)  # the package's release format
    with pytest.raises(XrvSourceError, match="trust_pickle"):
        load_xrv_source(pickled)
    trusted = load_xrv_source(pickled, trust_pickle=True)
    plain = load_xrv_source(xrv_weights)
    image = np.full((64, 64), 128, np.uint8)
    assert trusted.predict(image) == pytest.approx(plain.predict(image))
    with pytest.raises(XrvSourceError, match="only the DenseNet-121"):
        load_xrv_source(xrv_weights, weights_name="resnet50-res512-all")


def test_the_nih_label_mapping_is_the_one_shipped_with_the_data():
    from core_model.classes import NIH14_TO_CXRLT

    shipped = json.loads((SAMPLE / "label_mapping_nih14_to_cxrlt2024.json").read_text())["nih14_to_cxrlt2024"]
    assert NIH14_TO_CXRLT == shipped


def test_label_tables_of_both_layouts_agree_on_the_sample():
    nih = {r.image_id: r.labels for r in read_labels(SAMPLE / "Data_Entry_2017_v2020_subset.csv")}
    cxrlt = {r.image_id: r.labels for r in read_labels(SAMPLE / "labels_cxrlt2024_format.csv")}
    assert set(nih) == set(cxrlt) and len(nih) == 142
    assert all(nih[i] == cxrlt[i] for i in nih)
    patients = {r.image_id: r.patient for r in read_labels(SAMPLE / "Data_Entry_2017_v2020_subset.csv")}
    assert patients["00004030_000"] == "4030"


def test_submission_and_threshold_files_with_errors_name_line_and_column(tmp_path):
    header = "dicom_id," + ",".join(f'"{c}"' if "," in c else c for c in CXR_LT_26)
    bad = tmp_path / "submission.csv"
    bad.write_text(header + "\na," + ",".join(["0.2"] * 26) + "\nb,1.3," + ",".join(["0.1"] * 25) + "\n")
    submission = read_submission(bad)
    assert submission.label_set == "cxr-lt-26" and [r.dicom_id for r in submission.rows] == ["a"]
    (cell,) = submission.bad_rows
    assert (cell.line, cell.column, cell.value) == (3, CXR_LT_26[0], "1.3") and str(bad) in str(cell)
    bad.write_text(header + ",Heart Attack\na," + ",".join(["0.2"] * 27) + "\n")
    with pytest.raises(UnknownColumns, match=r"\['Heart Attack'\]"):
        read_submission(bad)
    bad.write_text("dicom_id,Pneumothorax\na,0.2\n")
    with pytest.raises(FindingsTableError, match="the 26 or the 40 CXR-LT classes"):
        read_submission(bad)
    thresholds = tmp_path / "t.csv"
    thresholds.write_text("class,threshold\nPneumothorax,0.3\nCardiomegaly,x\n")
    with pytest.raises(FindingsTableError, match="line 3: the threshold of 'Cardiomegaly'"):
        read_thresholds(thresholds)


def test_eval_findings_on_the_demo_set_and_its_predictions_round_trip(tmp_path):
    """The built-in model on the demo set (never trained on); its predictions written as a CXR-LT submission and
    evaluated again as an imported source give the same figures, which scikit-learn confirms."""
    from sklearn.metrics import roc_auc_score

    assert DEMO_IDS.is_file(), "the demo split's id list ships with the model"
    labels = SAMPLE / "Data_Entry_2017_v2020_subset.csv"
    first, predictions = tmp_path / "builtin.json", tmp_path / "builtin_predictions.csv"
    assert eval_findings(["--images", str(SAMPLE / "images"), "--labels", str(labels), "--ids", str(DEMO_IDS),
                          "--bootstrap", "200", "--threads", "2", "--json", str(first),
                          "--predictions-out", str(predictions)]) == 0
    builtin = json.loads(first.read_text())
    ids = {line.strip() for line in DEMO_IDS.read_text().splitlines() if line.strip()}
    assert builtin["images_evaluated"] == len(ids) and not builtin["images_missing"]
    assert builtin["source"]["kind"] == "built-in"
    second = tmp_path / "imported.json"
    assert eval_findings(["--images", str(SAMPLE / "images"), "--labels", str(SAMPLE / "labels_cxrlt2024_format.csv"),
                          "--ids", str(DEMO_IDS), "--source", f"csv:{predictions}", "--bootstrap", "200",
                          "--json", str(second)]) == 0
    imported = json.loads(second.read_text())
    assert imported["source"]["kind"] == "imported"
    truth = {r.image_id: r.labels for r in read_labels(labels) if r.image_id in ids}
    with predictions.open() as handle:
        rows = {row["dicom_id"]: row for row in csv.DictReader(handle)}
    for name, measured in builtin["classes"].items():
        if measured["auroc"] is None:
            continue
        assert imported["classes"][name]["auroc"] == pytest.approx(measured["auroc"])
        keys = sorted(truth)
        expected = roc_auc_score([truth[k][name] for k in keys], [float(rows[k][name]) for k in keys])
        assert measured["auroc"] == pytest.approx(expected)
        assert measured["auroc_low"] <= measured["auroc"] <= measured["auroc_high"]
    summary = builtin["summary"]
    assert summary["macro_auroc"] == pytest.approx(np.mean([c["auroc"] for c in builtin["classes"].values()
                                                            if c["auroc"] is not None]))
    assert 0 <= summary["ece"] <= 1


def test_eval_findings_reports_unusable_input_and_exits_2(tmp_path, capsys):
    assert eval_findings(["--images", str(tmp_path), "--labels", str(SAMPLE / "labels_cxrlt2024_format.csv")]) == 2
    assert "none of the 142 labelled images found" in capsys.readouterr().err
    assert eval_findings(["--images", str(SAMPLE / "images"), "--labels", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: file not found" in capsys.readouterr().err
