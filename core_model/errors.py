"""Typed errors for reading medical images.

Every loader in :mod:`core_model.io` raises one of these for a bad file (never a bare library exception); the library
exception, when there is one, is chained as ``__cause__``. ``str(error) == f"{path}: {cause}"``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence


class ImageReadError(Exception):
    """Base class: the file at ``path`` could not be read as an image, because of ``cause``."""

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = str(path)
        self.cause = str(cause)
        super().__init__(f"{self.path}: {self.cause}")

    def __reduce__(self):  # keep pickling (multiprocessing, Gradio workers) working with the two-argument __init__
        return (type(self), (self.path, self.cause))


class EmptyFileError(ImageReadError):
    """The file has 0 bytes."""


class UnsupportedFormatError(ImageReadError):
    """The content (sniffed from the bytes, not the extension) is not PNG, JPEG, DICOM or NIfTI."""


class CorruptImageError(ImageReadError):
    """Truncated or corrupt PNG/JPEG/DICOM/NIfTI, or pixel data that cannot be decoded."""


class UnsupportedTransferSyntaxError(ImageReadError):
    """A DICOM transfer syntax that no installed pixel-data plugin decodes."""


class ImageTooLargeError(ImageReadError):
    """More pixels/voxels than allowed (decompression-bomb guard, checked from the header before decoding)."""


class InvalidPixelValuesError(ImageReadError):
    """NaN/Inf values, or size 0 in some dimension."""


class MaskShapeError(ImageReadError):
    """A mask whose shape differs from the shape it must match."""


class SeriesSelectionError(ImageReadError):
    """Several DICOM series where one is needed (a folder without ``series_uid``, or files of different series), or
    no series with the requested SeriesInstanceUID. ``series_uids`` lists the series found (sorted)."""

    def __init__(self, path: str | os.PathLike[str], cause: str, series_uids: Sequence[str] = ()) -> None:
        self.series_uids = tuple(series_uids)
        super().__init__(path, cause)

    def __reduce__(self):
        return (type(self), (self.path, self.cause, self.series_uids))


__all__ = [
    "ImageReadError",
    "EmptyFileError",
    "UnsupportedFormatError",
    "CorruptImageError",
    "UnsupportedTransferSyntaxError",
    "ImageTooLargeError",
    "InvalidPixelValuesError",
    "MaskShapeError",
    "SeriesSelectionError",
]
