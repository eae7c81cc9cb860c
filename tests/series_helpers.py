"""A real CT series on disk: one CT Image Storage file per axial slice of shared/data/ct_nifti/example_ct.nii.gz.

``write_ct_series`` keeps the NIfTI's geometry exactly: slice k of the NIfTI (data[:, :, k], i = column, j = row)
becomes a file with Rows = J, Columns = I, Image Orientation (Patient) = the LPS directions of the NIfTI's i and j
axes, Image Position (Patient) = the LPS position of voxel (0, 0, k), Pixel Spacing = (|j| mm, |i| mm). Every slice
has its own Rescale Slope/Intercept; file names and Instance Numbers are shuffled; Slice Thickness is deliberately
wrong (the loader must take the spacing from the positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class CtSeries:
    """The files (in NIfTI slice order k), their folder, the series UID and the source NIfTI's voxels and affine."""

    folder: Path
    files: list[Path]
    series_uid: str
    voxels: np.ndarray  # (I, J, K) int32 HU, the NIfTI's voxel order
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm


def _ds(values: np.ndarray | list[float], digits: int = 4) -> list[str]:
    return [f"{float(v):.{digits}f}" for v in values]


def _slice_dataset(hu: np.ndarray, lps: np.ndarray, k: int, instance: int, uids: dict[str, str]) -> Dataset:
    """One CT slice: ``hu`` (Rows, Columns) int, stored as uint16 with a per-slice slope/intercept."""
    slope, intercept = (1.0 if k % 2 == 0 else 0.5), -(2048.0 + k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex, ds.PatientAge = "CT", "F", "063Y"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "CT-SERIES-1", "19600101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.InstanceNumber = uids["frame"], instance
    spacing = np.linalg.norm(lps[:3, :3], axis=0)  # mm along i (columns), j (rows), k
    ds.ImageOrientationPatient = _ds(np.r_[lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]], 6)
    ds.ImagePositionPatient = _ds((lps @ [0.0, 0.0, k, 1.0])[:3])
    ds.PixelSpacing = _ds([spacing[1], spacing[0]])
    ds.SliceThickness = "5.0"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = _ds([slope], 1)[0], _ds([intercept], 1)[0]
    stored = np.round((hu.astype(np.float64) - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 65536
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def write_ct_series(nifti: Path, folder: Path, *, seed: int = 0, prefix: str = "IM") -> CtSeries:
    """Write every axial slice of ``nifti`` as a CT Image Storage file ``folder/<prefix><nnnn>.dcm`` (names and
    Instance Numbers shuffled with ``seed``; new Study/Series/Frame of Reference UIDs)."""
    image = nib.load(str(nifti))
    voxels = np.asarray(image.dataobj).astype(np.int32)
    lps = LPS_FROM_RAS @ image.affine
    depth = voxels.shape[2]
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(depth), rng.permutation(depth) + 1
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(depth):
        ds = _slice_dataset(voxels[:, :, k].T, lps, k, int(instances[k]), uids)
        path = folder / f"{prefix}{int(names[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return CtSeries(folder, files, uids["series"], voxels, np.asarray(image.affine, dtype=np.float64))


def write_enhanced_ct(series: CtSeries, path: Path) -> Path:
    """The series as ONE multi-frame Legacy Converted Enhanced CT file (highdicom's converter; per-frame plane
    positions and rescale values in the functional groups), identifiers kept."""
    import highdicom as hd
    import pydicom
    slices = [pydicom.dcmread(p) for p in series.files]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(slices, series_instance_uid=hd.UID(), series_number=2,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(path, enforce_file_format=True)
    return path
