"""Decoding picture files (JPEG / PNG / TIFF / BMP) into arrays: images and code masks.

Below ``data`` and ``io.slides``, which both decode pictures; errors are
:class:`DecodeError`, an input error naming what is wrong with the file."""

from __future__ import annotations

import io
import warnings

import numpy as np

from minseg.errors import InputError


TIFF_SUFFIXES = (".tif", ".tiff")


class DecodeError(InputError):
    """A file that cannot be used; the message says why."""


def _open_pil(data: bytes, name: str, max_pixels: int):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DecodeError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    return image


def _read_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages[0]
            if int(np.prod(page.shape[:2])) > max_pixels:
                raise DecodeError(f"image of {page.shape[0]}x{page.shape[1]} exceeds max_image_pixels")
            return page.asarray()
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3); greyscale is repeated, alpha dropped, 16-bit scaled down."""
    if name.lower().endswith(TIFF_SUFFIXES):
        array = _read_tiff(data, max_pixels)
    else:
        image = _open_pil(data, name, max_pixels)
        if image.mode not in ("RGB", "L", "I;16", "I"):
            image = image.convert("RGB")
        array = np.asarray(image)
    return to_rgb8(array)


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) from grey, grey + alpha, RGBA or 16-bit pixels."""
    if array.dtype != np.uint8:
        if array.dtype.kind not in "ui":
            raise DecodeError(f"unsupported pixel type {array.dtype}")
        array = (array.astype(np.float64) * 255.0 / max(1, np.iinfo(array.dtype).max)).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grey, grey + alpha
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    elif array.ndim != 3 or array.shape[2] != 3:
        raise DecodeError(f"unsupported image shape {array.shape}")
    return np.ascontiguousarray(array)


def decode_mask(data: bytes, name: str, max_pixels: int, rgb: bool = False) -> np.ndarray:
    """Mask codes (H, W) as stored (palette PNGs give their indices), or (H, W, 3) for RGB."""
    if name.lower().endswith(TIFF_SUFFIXES):
        array = _read_tiff(data, max_pixels)
    else:
        image = _open_pil(data, name, max_pixels)
        if rgb:
            image = image.convert("RGB")
        elif image.mode in ("RGB", "RGBA"):
            raise DecodeError(f"mask is {image.mode} but class codes were expected (set mask_encoding: colors)")
        array = np.asarray(image)
    if not rgb and array.ndim != 2:
        raise DecodeError(f"mask must be single-channel, got shape {array.shape}")
    return array
