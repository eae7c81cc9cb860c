"""Detect a file's format from its bytes (not its name)."""
from __future__ import annotations

import gzip
import os
import struct
import zlib

from core_model.errors import CorruptImageError, EmptyFileError, ImageReadError, UnsupportedFormatError
from core_model.io.types import PathLike

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
GZIP_MAGIC = b"\x1f\x8b"


def read_head(path: PathLike, n: int = 1024) -> bytes:
    """First ``n`` bytes; typed errors for a missing, unreadable or empty file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(n)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    return head


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic 'n+1'/'ni1' at 344) or NIfTI-2 (540 bytes, magic 'n+2'/'ni2' at 4)."""
    if len(head) >= 348 and struct.unpack("<i", head[:4])[0] in (348, 0x5C010000):
        return head[344:347] in (b"n+1", b"ni1")
    if len(head) >= 12 and struct.unpack("<i", head[:4])[0] in (540, 0x1C020000):
        return head[4:7] in (b"n+2", b"ni2")
    return False


def _gunzip_head(path: PathLike, n: int = 540) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptImageError(path, f"corrupt gzip stream ({exc})") from exc


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble: starts with a group 0002 or 0008 little-endian tag."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    element = struct.unpack("<H", head[2:4])[0]
    return element < 0x0200 and (head[4:6].isalpha() or head[6:8] == b"\x00\x00" or head[4:6] == b"UL")


def detect_format(path: PathLike) -> str:
    """'png' | 'jpeg' | 'dicom' | 'nifti' from the content; raises EmptyFileError / UnsupportedFormatError."""
    head = read_head(path)
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(GZIP_MAGIC):
        if _is_nifti_header(_gunzip_head(path)):
            return "nifti"
        raise UnsupportedFormatError(path, "gzip file that does not contain a NIfTI header")
    if _looks_like_raw_dicom(head):
        return "dicom"
    raise UnsupportedFormatError(path, f"not a PNG, JPEG, DICOM or NIfTI file (starts with {head[:8]!r})")


def is_raw_dicom(path: PathLike) -> bool:
    """True for a DICOM data set written without the 128-byte preamble and 'DICM' (parse with ``force``)."""
    head = read_head(path, 132)
    return not (len(head) >= 132 and head[128:132] == b"DICM")


def raster_header_size(path: PathLike, fmt: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOFn marker, without decoding; None if not found."""
    with open(path, "rb") as fh:
        data = fh.read(24) if fmt == "png" else fh.read(1 << 20)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise CorruptImageError(path, "PNG without a complete IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return _jpeg_sof_size(data)


def _jpeg_sof_size(data: bytes) -> tuple[int, int] | None:
    """Walk JPEG markers to the first SOFn (C0–CF except C4, C8, CC) and read (width, height)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return None
