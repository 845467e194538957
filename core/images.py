"""Decode uploaded images in memory and turn them into model inputs.

Everything here works on bytes and arrays: an upload is never written to disk.
Decoding is defensive because uploads come from anywhere:

* EXIF orientation is applied, so a phone photo is shown and classified upright.
* Grayscale, palette, CMYK, 16-bit and float images become 8-bit RGB. 16-bit
  values are scaled by 1/257 (0..65535 maps onto 0..255).
* Transparent pixels are composited on white (``background``), which is how a
  browser shows a transparent PNG on a light page, so the model sees what the
  user saw.
* Images larger than ``max_pixels`` (40 megapixels by default) are refused
  before any pixel is decoded; Pillow's decompression-bomb warning is turned
  into an error as well. Truncated or corrupt files raise :class:`ImageError`.

Model inputs follow the model folder contract: a plain bilinear stretch to
``size × size`` (no crop) and float32 RGB in 0..255.
"""

import io
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
MAX_ZIP_MEMBER_BYTES = 64 * 1024 * 1024
WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(ValueError):
    """An upload that cannot be used as an image, with a message fit for the user."""


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, background=WHITE) -> np.ndarray:
    """Decode image bytes to an upright 8-bit RGB array.

    Args:
        data: the encoded file (JPEG, PNG, BMP, TIFF, WebP, ...).
        max_pixels: refuse images with more pixels than this (checked from the header).
        background: RGB colour transparent pixels are composited on.

    Returns:
        A ``(H, W, 3)`` uint8 array.

    Raises:
        ImageError: empty, unrecognised, truncated, corrupt or oversized input.
    """
    if not data:
        raise ImageError("The file is empty.")
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, max_pixels)
        image = _upright(image)
        return _to_rgb(image, background)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check the size from the header, then decode the pixels."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise ImageError("This file is not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP).") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"Refused: the image is suspiciously large for its file size ({err}).") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"The image could not be read ({err}).") from err
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"The image is too large: {width}×{height} = {width * height / 1e6:.1f} megapixels "
            f"(the limit is {max_pixels / 1e6:g} megapixels)."
        )
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"Refused: the image is suspiciously large for its file size ({err}).") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"The image file is truncated or corrupt ({err}).") from err
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return image


def _to_rgb(image: Image.Image, background) -> np.ndarray:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on ``background``."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _high_depth_to_rgb(image)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, tuple(background) + (255,))
        image = Image.alpha_composite(canvas, image)
    try:
        rgb = image.convert("RGB")
    except (OSError, ValueError) as err:
        raise ImageError(f"Unsupported pixel format {image.mode!r}.") from err
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _high_depth_to_rgb(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8-bit RGB."""
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or 255 < top <= 65535:
        values = values / 257.0
    elif top > 65535:
        # Values beyond 16 bits have no agreed range: stretch them.
        values = values / top * 255.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def as_hw(size) -> tuple[int, int]:
    """``(height, width)`` from a side ``S`` (a square) or a ``(height, width)`` pair."""
    if np.ndim(size) == 0:
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def to_model_input(rgb: np.ndarray, size) -> np.ndarray:
    """Resize an RGB image to the model's input: bilinear stretch, no crop.

    Args:
        rgb: a ``(H, W, 3)`` uint8 array.
        size: the model's input ``(height, width)``, or one side for a square input.

    Returns:
        A ``(height, width, 3)`` float32 array with values in 0..255.
    """
    return model_pixels(rgb, size).astype(np.float32)


def model_pixels(rgb: np.ndarray, size) -> np.ndarray:
    """:func:`to_model_input` as uint8: what the training cache stores, pixel for pixel."""
    height, width = as_hw(size)
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_model_pixels(path, size) -> np.ndarray:
    """Decode an image file exactly as an upload is decoded, then resize it to the model's input (uint8)."""
    return model_pixels(decode_image(Path(path).read_bytes()), size)


def resize_mask(mask: np.ndarray, shape: tuple) -> np.ndarray:
    """Resize a lesion mask to ``shape`` (H, W) with nearest neighbour; returns bool."""
    image = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    image = image.resize((shape[1], shape[0]), resample=Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def read_mask(path: Path) -> np.ndarray:
    """Read a binary lesion mask file as a bool ``(H, W)`` array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def is_image_name(name: str) -> bool:
    """True when a file name has one of the accepted image suffixes."""
    return Path(name).suffix.lower().lstrip(".") in UPLOAD_TYPES


def zip_members(data: bytes) -> Iterator[tuple[str, bytes | ImageError]]:
    """Yield ``(name, bytes)`` for each image inside a zip held in memory.

    Members that are too large once decompressed are yielded with an
    :class:`ImageError` instead of bytes, so a caller can report and skip them.

    Raises:
        ImageError: the data is not a readable zip file.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as err:
        raise ImageError(f"Not a readable zip file ({err}).") from err
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not is_image_name(info.filename) or "__MACOSX" in info.filename:
                continue
            if info.file_size > MAX_ZIP_MEMBER_BYTES:
                yield info.filename, ImageError(f"{info.filename}: too large inside the zip.")
                continue
            try:
                yield info.filename, archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                yield info.filename, ImageError(f"{info.filename}: cannot be extracted ({err}).")


def iter_sources(paths) -> Iterator[tuple[str, bytes | ImageError]]:
    """Yield ``(name, bytes)`` for image files, folders (recursively) and zips.

    Unreadable entries are yielded with an :class:`ImageError` in place of bytes.
    """
    for path in map(Path, paths):
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if is_image_name(child.name) or child.suffix.lower() == ".zip":
                    yield from iter_sources([child])
        elif path.suffix.lower() == ".zip":
            try:
                yield from ((f"{path}!{n}", d) for n, d in zip_members(path.read_bytes()))
            except (ImageError, OSError) as err:
                yield str(path), ImageError(f"{path}: {err}")
        else:
            try:
                yield str(path), path.read_bytes()
            except OSError as err:
                yield str(path), ImageError(f"{path}: cannot be read ({err.strerror or err}).")
