"""PNG and JPEG (8- or 16-bit; L, LA, P, RGB, RGBA, I;16, I, F) -> grayscale LoadedImage."""
from __future__ import annotations

import contextlib
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from core_model.errors import CorruptImageError, ImageTooLargeError
from core_model.io.sniff import raster_header_size
from core_model.io.types import (
    PathLike,
    ImageMetadata,
    LoadedImage,
    WindowArg,
    apply_window,
    auto_window,
    check_dims,
    check_finite,
    resolve_window,
)

_PIL_LIMIT_LOCK = threading.Lock()
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


@contextlib.contextmanager
def _pil_limit(max_pixels: int) -> Iterator[None]:
    """Let PIL open images up to ``max_pixels`` (our own header check already ran) without mutating it for long."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or max_pixels <= current:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
        return
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current


def read_raster_array(path: PathLike, fmt: str, max_pixels: int) -> tuple[np.ndarray, str, dict]:
    """Decode a PNG/JPEG to a 2-D array (H, W): uint8, uint16/int32 (16-bit) or float32 ('F').

    Returns (array, original PIL mode, info). The size limit is checked from the header before decoding.
    """
    size = raster_header_size(path, fmt)
    if size is not None:
        check_dims(path, (size[1], size[0]), max_pixels)
    try:
        with _pil_limit(max_pixels), Image.open(path) as im:
            check_dims(path, (im.height, im.width), max_pixels)
            im.load()
            mode, info = im.mode, {k: v for k, v in im.info.items() if k in ("dpi", "gamma")}
            arr = _to_gray(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, f"decompression bomb guard: {exc}") from exc
    except _PIL_ERRORS as exc:
        raise CorruptImageError(path, f"cannot decode {fmt.upper()}: {exc}") from exc
    return arr, mode, info


def _to_gray(im: Image.Image) -> np.ndarray:
    """(H, W) grayscale: alpha dropped, colour -> ITU-R 601 luma (PIL 'L'), 16-bit and float kept at full depth."""
    if im.mode in ("L", "I", "F") or im.mode.startswith("I;16"):
        return np.array(im)
    if im.mode in ("LA", "La"):
        return np.array(im.getchannel(0))
    if im.mode == "1":
        return np.array(im.convert("L"))
    if im.mode in ("RGBa", "PA", "P"):
        im = im.convert("RGBA")
    return np.array(im.convert("RGB").convert("L"))


def load_raster(path: PathLike, fmt: str, window: WindowArg, max_pixels: int) -> LoadedImage:
    """Load a PNG/JPEG as a LoadedImage; 8-bit -> /255, 16-bit -> /65535 unless ``window`` is given.

    ``raw`` is None for 8-bit images, the stored values (float32) otherwise. No EXIF rotation is applied: the pixel
    grid is the file's, so masks drawn on it stay aligned.
    """
    arr, mode, info = read_raster_array(path, fmt, max_pixels)
    check_finite(path, arr)
    bits = 8 if arr.dtype == np.uint8 else (32 if arr.dtype.kind == "f" else 16)
    values = arr.astype(np.float32)
    chosen = resolve_window(window)
    if chosen is None and bits == 32:
        chosen = auto_window(values, robust=False)
    if chosen is None:
        full = 255.0 if bits == 8 else 65535.0
        pixels, applied = values / full, (full / 2.0, full)
    else:
        pixels, applied = apply_window(values, *chosen), chosen
    meta = ImageMetadata(
        source=str(path), format=fmt, bits_stored=bits if bits != 32 else None, window=applied,
        extra={"pil_mode": mode, **info},
    )
    return LoadedImage(pixels=pixels.astype(np.float32), raw=None if bits == 8 else values, metadata=meta)
