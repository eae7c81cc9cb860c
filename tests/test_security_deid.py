"""De-identification of exported DICOM (security issue #14): PS3.15 Annex E on the real CXR DICOMs, a real CT series
and the same CT as one enhanced multi-frame file; DICOM-SEGs still reference their exported de-identified copies."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from annotations_db import export
from annotations_db.cli import export_main
from annotations_db.deid import DeidOptions, is_registry_uid
from annotations_db.errors import ExportError
from annotations_db.importers import import_dicom
from annotations_db.models import Case
from annotations_db.store import Store
from tests.series_helpers import write_ct_series, write_enhanced_ct

SITE = re.compile(r"Institution|Department|Station|Creator|Operator|Physician")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """The six real CXR DICOMs, a CT series and an enhanced CT (each one case with a mask), exported twice."""
    root = tmp_path_factory.mktemp("deid")
    url = f"sqlite:///{root / 'db.sqlite'}"
    store = Store.open(url)
    import_dicom(store, shared_data / "cxr_dicom", "cxr", progress=False)
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", root / "pacs" / "series")
    import_dicom(store, root / "pacs" / "series", "ct", progress=False)
    write_enhanced_ct(series, root / "pacs" / "enhanced" / "ct.dcm")
    import_dicom(store, root / "pacs" / "enhanced", "enhanced", progress=False)
    reader = store.create_reader("ada", "pw", "admin")
    with store.read_session() as session:
        cases = list(session.scalars(select(Case).order_by(Case.id)))
    for case in cases:
        shape = (case.height, case.width) if case.depth is None else (case.width, case.height, case.depth)
        mask = np.zeros(shape, np.uint8)
        mask[10:40, 20:50, ...] = 1
        store.log_event(case.id, reader, "case_shown")
        store.save_annotation(case.id, reader, {"Pneumothorax": 1}, mask=mask)
    first = export.export_training(store, root / "first", formats=("dicom-seg", "png", "nifti", "coco"))
    second = export.export_training(store, root / "second", formats=("dicom-seg",))
    yield {"store": store, "url": url, "root": root, "cases": cases, "series": series, "first": first.parent,
           "second": second.parent}
    store.close()


def _elements(ds: Any) -> Iterator[Any]:
    """Every data element of ``ds``, its file meta and every sequence item, depth first."""
    meta = getattr(ds, "file_meta", None)
    for element in ([*meta] if meta is not None else []) + [*ds]:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)


def _values(element: Any) -> list[str]:
    value = element.value
    if value is None:
        return []
    return [str(v) for v in (value if element.VM > 1 else [value]) if str(v).strip()]


def _instance_uids(ds: Any) -> set[str]:
    """Every UID value of ``ds`` that is not a well-known registry UID (SOP class, transfer syntax...) nor the
    ImplementationClassUID (the writing software's, e.g. pydicom's: the CT series' too)."""
    return {v for e in _elements(ds) if e.VR == "UI" and e.keyword != "ImplementationClassUID" for v in _values(e)
            if not is_registry_uid(v)}


def _dates(ds: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for element in _elements(ds):
        if element.VR in ("DA", "DT", "TM") and _values(element):
            found.setdefault(element.keyword, []).extend(_values(element))
    return found


def _site_values(ds: Any) -> set[str]:
    return {v.strip() for e in _elements(ds) if e.keyword and SITE.search(e.keyword) and e.VR != "SQ"
            for v in _values(e) if v.strip()}


def _sources(case: Case) -> list[pydicom.Dataset]:
    folder = Path(case.source_uri)
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else [folder]
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _outputs(out: Path, case: Case) -> list[Path]:
    paths = [out / "masks" / f"{case.pseudo_id}.seg.dcm", out / "images" / f"{case.pseudo_id}.dcm"]
    return [p for p in paths if p.exists()]


def test_security_exported_dicom_has_no_source_uid_date_or_site_value(world: dict) -> None:
    checked = 0
    for case in world["cases"]:
        sources = _sources(case)
        uids = set().union(*map(_instance_uids, sources))
        dates = {v for s in sources for values in _dates(s).values() for v in values}
        site = set().union(*map(_site_values, sources))
        assert uids, case.pseudo_id
        for path in _outputs(world["first"], case):
            out = pydicom.dcmread(path)
            blob = path.read_bytes()
            assert not _instance_uids(out) & uids, path
            assert not any(uid.encode() in blob for uid in uids), path
            assert not {v for values in _dates(out).values() for v in values} & dates, path
            assert not any(e.keyword and SITE.search(e.keyword) and e.VR != "SQ" and _values(e)
                           for e in _elements(out)), path
            assert not any(v.encode() in blob for v in site if len(v) >= 4), path
            assert not any(e.tag.is_private for e in _elements(out)), path
            checked += 1
    assert checked == 6 * 2 + 1 + 2  # CXR: SEG + copy; series: SEG (its copy is a NIfTI); enhanced: SEG + copy


def test_security_exported_dicom_is_marked_with_the_profile_and_the_pseudonym(world: dict) -> None:
    for case in world["cases"]:
        for path in _outputs(world["first"], case):
            out = pydicom.dcmread(path)
            assert out.PatientID == case.pseudo_id and str(out.PatientName) == f"{case.pseudo_id}^"
            assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "REMOVED"
            codes = [(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence]
            assert codes == [("113100", "DCM"), ("113105", "DCM")]
            assert "Annex E" in out.DeidentificationMethod[0]
            assert not out.get("PatientBirthDate") and not out.get("StudyDate") and not out.get("PatientAge")


def test_security_seg_references_its_exported_image_copy(world: dict) -> None:
    out = world["first"]
    for case in world["cases"]:
        seg_path, copy_path = out / "masks" / f"{case.pseudo_id}.seg.dcm", out / "images" / f"{case.pseudo_id}.dcm"
        if not copy_path.exists():  # the series case: its image copy is a NIfTI, no DICOM header to reference
            continue
        seg, copy = hd.seg.segread(str(seg_path)), pydicom.dcmread(copy_path)
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == copy.SeriesInstanceUID
        assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {copy.SOPInstanceUID}
        frames = {s.ReferencedSOPInstanceUID for g in seg.PerFrameFunctionalGroupsSequence
                  for s in g.DerivationImageSequence[0].SourceImageSequence}
        assert frames == {copy.SOPInstanceUID}
        assert seg.StudyInstanceUID == copy.StudyInstanceUID and seg.PatientID == copy.PatientID
        if "FrameOfReferenceUID" in copy:
            assert seg.FrameOfReferenceUID == copy.FrameOfReferenceUID
        assert seg.get_segment_numbers() == [1] and seg.pixel_array.any()


def test_security_series_seg_references_each_slice_once_with_consistent_uids(world: dict) -> None:
    case = next(c for c in world["cases"] if export.is_series_case(c))
    seg = hd.seg.segread(str(world["first"] / "masks" / f"{case.pseudo_id}.seg.dcm"))
    frames = [s.ReferencedSOPInstanceUID for g in seg.PerFrameFunctionalGroupsSequence
              for s in g.DerivationImageSequence[0].SourceImageSequence]
    listed = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert len(set(frames)) == len(frames) == len(world["series"].files) and set(frames) == set(listed)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID != world["series"].series_uid


def test_security_two_exports_give_different_uids(world: dict) -> None:
    for case in world["cases"]:
        path = Path("masks") / f"{case.pseudo_id}.seg.dcm"
        first, second = (pydicom.dcmread(world[run] / path) for run in ("first", "second"))
        assert not _instance_uids(first) & _instance_uids(second), case.pseudo_id
        assert first.PatientID == second.PatientID == case.pseudo_id


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_security_training_manifest_datalist_and_coco_have_no_absolute_path(world: dict) -> None:
    out = world["first"]
    documents = [json.loads((out / name).read_text()) for name in ("manifest.json", "datalist.json", "coco.json")]
    documents += [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    sources = {str(Path(c.source_uri).parent) for c in world["cases"]} | {str(world["root"])}
    for text in (s for document in documents for s in _strings(document)):
        assert not text.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", text), text
        assert not any(source in text for source in sources), text
    items = json.loads((out / "manifest.json").read_text())["items"]
    assert len(items) == len(world["cases"]) and all((out / item["image"]).is_file() for item in items)


def test_security_training_export_refuses_source_paths(world: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="server paths"):
        export.export_training(world["store"], tmp_path / "src", images="source")
    assert not (tmp_path / "src").exists()
    assert export_main(["training", str(tmp_path / "cli"), "--images", "source", "--db", world["url"]]) == 2
    assert "server paths" in capsys.readouterr().err and not (tmp_path / "cli" / "manifest.json").exists()


def _as_day(value: str) -> datetime:
    digits = re.sub(r"\D", "", value)[:8]
    return datetime.strptime(digits, "%Y%m%d")


def test_security_date_shift_keeps_intervals(world: dict, tmp_path: Path) -> None:
    options = DeidOptions.random_date_shift()
    assert -3650 <= options.date_shift_days <= -365
    export.export_training(world["store"], tmp_path / "shifted", formats=("dicom-seg",), deid_options=options)
    offsets, compared = set(), 0
    for case in world["cases"]:
        source = pydicom.dcmread(case.source_uri) if not Path(case.source_uri).is_dir() else None
        copy_path = tmp_path / "shifted" / "images" / f"{case.pseudo_id}.dcm"
        if source is None or not copy_path.exists():
            continue
        copy, before = pydicom.dcmread(copy_path), _dates(source)
        assert copy.LongitudinalTemporalInformationModified == "MODIFIED"
        assert [c.CodeValue for c in copy.DeidentificationMethodCodeSequence] == ["113100", "113105", "113107"]
        for keyword, values in _dates(copy).items():
            if keyword in before and keyword.endswith("Date"):
                offsets.update((_as_day(a) - _as_day(b)).days for a, b in zip(values, before[keyword]))
                compared += 1
        assert not copy.get("PatientBirthDate")
    assert compared >= 6 and offsets == {options.date_shift_days}  # one offset: every interval kept
