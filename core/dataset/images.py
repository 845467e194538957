"""Decode uploaded images in memory and turn them into model inputs.

Everything here works on bytes and arrays: an upload is never written to disk.
Decoding is defensive because uploads come from anywhere:

* EXIF orientation is applied, so a phone photo is shown and classified upright.
* Grayscale, palette, CMYK, 16-bit and float images become 8-bit RGB. 16-bit
  values are scaled by 1/257 (0..65535 maps onto 0..255); float images whose
  values lie in 0..1 are scaled by 255. Non-finite float pixels never set the
  scale: NaN becomes the lowest finite value, +inf the highest, -inf the
  lowest, so one bad pixel cannot turn the image black.
* Transparent pixels are composited on white (``background``), which is how a
  browser shows a transparent PNG on a light page, so the model sees what the
  user saw.
* Images larger than ``max_pixels`` (40 megapixels by default) are refused
  before any pixel is decoded; Pillow's decompression-bomb warning is turned
  into an error as well. Truncated or corrupt files raise :class:`ImageError`.
* The app decodes with a lower limit (:data:`INTERACTIVE_MAX_PIXELS`) and a
  ``max_side``: the image is reduced to the size it is shown at right after
  decoding (JPEGs are even decoded at a reduced scale), so no full-size array,
  saliency map or overlay of a huge upload is ever kept; and images above
  :data:`LARGE_DECODE_PIXELS` are decoded one at a time across all sessions.

Model inputs follow the model folder contract: a plain bilinear stretch to
``size × size`` (no crop) and float32 RGB in 0..255.
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.contracts.predictions import write_csv
from core.contracts.validation import InputError, check_output_folder, read_regular, report

MAX_PIXELS = 40_000_000
# The app decodes at most one image above this size at a time, whatever the number of
# sessions: a 25-megapixel PNG briefly needs ~100 MB, and three at once would triple that.
LARGE_DECODE_PIXELS = 4_000_000
_LARGE_DECODES = threading.BoundedSemaphore(1)
# The app's limits: a 24-megapixel camera image passes, a 6,300 x 6,300 bomb does not;
# what is kept is at most DISPLAY_MAX_SIDE pixels on its longer side.
INTERACTIVE_MAX_PIXELS = 25_000_000
DISPLAY_MAX_SIDE = 1024
UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
MAX_ZIP_MEMBER_BYTES = 64 * 1024 * 1024
WHITE = (255, 255, 255)
STAGING_PREFIX = ".writing-"  # + pid + "-": the hidden folder write_per_image stages files in
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(ValueError):
    """An upload that cannot be used as an image, with a message fit for the user."""


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, background=WHITE,
                 max_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an upright 8-bit RGB array.

    Args:
        data: the encoded file (JPEG, PNG, BMP, TIFF, WebP, ...).
        max_pixels: refuse images with more pixels than this (checked from the header).
        background: RGB colour transparent pixels are composited on.
        max_side: when given, reduce the image right after decoding so that its
            longer side is at most this (aspect ratio kept).

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
        image = open_image(data, max_pixels)
        with _decode_slot(image.size, max_side):
            _load(image, max_side)
            turn = _orientation(image)
            image = _shrink(image, max_side)
        return _to_rgb(image.transpose(turn) if turn is not None else image, background)


@contextlib.contextmanager
def _decode_slot(size: tuple, max_side: int | None):
    """Hold the process-wide slot while a large image is decoded for the app (see :data:`LARGE_DECODE_PIXELS`)."""
    if not max_side or size[0] * size[1] <= LARGE_DECODE_PIXELS:
        yield
        return
    with _LARGE_DECODES:
        yield


def decode_upload(data: bytes) -> np.ndarray:
    """:func:`decode_image` with the app's limits: :data:`INTERACTIVE_MAX_PIXELS`, :data:`DISPLAY_MAX_SIDE`."""
    return decode_image(data, max_pixels=INTERACTIVE_MAX_PIXELS, max_side=DISPLAY_MAX_SIDE)


def _shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    """The image reduced so its longer side is at most ``max_side``; metadata (EXIF) kept."""
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette resizes only by nearest neighbour
    smooth = image.mode in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr")
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return image.resize(size, resample=resample, reducing_gap=2.0 if smooth else None)


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open encoded image bytes and check the size from the header; no pixel is decoded yet.

    The one place a file becomes a Pillow image: images (:func:`decode_image`) and
    masks (:func:`read_mask`), for training, serving, evaluation and the explorer.

    Raises:
        ImageError: unrecognised, unreadable or larger than ``max_pixels``.
    """
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
    return image


def _load(image: Image.Image, max_side: int | None) -> None:
    """Decode the pixels (a large JPEG at a reduced scale when ``max_side`` allows)."""
    if max_side and image.format == "JPEG" and max(image.size) > 2 * max_side:
        image.draft("RGB", (max_side, max_side))  # DCT scaling: never holds the full-size pixels
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"Refused: the image is suspiciously large for its file size ({err}).") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"The image file is truncated or corrupt ({err}).") from err


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image):
    """The transpose that makes the image upright (EXIF orientation), or None.

    Read before any resizing, which drops format-specific tags. A broken EXIF
    block is ignored, not fatal.
    """
    try:
        return _TRANSPOSE.get(int(image.getexif().get(0x0112, 1)))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return None


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
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8-bit RGB (non-finite pixels: module docstring)."""
    values = _finite(np.asarray(image, dtype=np.float64))
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F" and float(values.min(initial=0.0)) >= 0.0 and 0.0 < top <= 1.0:
        values = values * 255.0  # float images in 0..1, the usual convention
    elif image.mode.startswith("I;16") or 255 < top <= 65535:
        values = values / 257.0
    elif top > 65535:
        # Values beyond 16 bits have no agreed range: stretch them.
        values = values / top * 255.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _finite(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN and -inf set to the lowest finite value and +inf to the highest (0 when none is finite)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    return np.nan_to_num(values, nan=low, posinf=high, neginf=low)


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
    return model_pixels(read_image(path), size)


def read_image(path, decode=decode_image) -> np.ndarray:
    """Decode an image file exactly as an upload is decoded (``decode``: the app passes :func:`decode_upload`).

    Raises:
        ImageError: not an image, or not a regular file (a FIFO or device is refused unopened).
        OSError: the file cannot be read.
    """
    return decode(_file_bytes(path))


def _file_bytes(path) -> bytes:
    try:
        return read_regular(path)
    except InputError as err:  # an ImageError as for any unusable file
        raise ImageError(f"{err}.") from err


def resize_mask(mask: np.ndarray, shape: tuple) -> np.ndarray:
    """Resize a lesion mask to ``shape`` (H, W) with nearest neighbour; returns bool."""
    image = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    image = image.resize((shape[1], shape[0]), resample=Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The border pixels of a bool mask, ``width`` pixels thick, drawn inwards (bool array).

    A region cut by the frame gets no line along the frame: the line marks only
    borders that are really in the image.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=1)
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1) & mask
    return edge


def read_mask(path: Path) -> np.ndarray:
    """Read a binary lesion mask file as a bool ``(H, W)`` array (grey level above 127).

    Raises:
        ImageError: not an image, or not a regular file.
        OSError: the file cannot be read.
    """
    image = open_image(_file_bytes(path))
    _load(image, None)
    return np.asarray(image.convert("L")) > 127


def is_image_name(name: str) -> bool:
    """True when a file name has one of the accepted image suffixes."""
    return Path(name).suffix.lower().lstrip(".") in UPLOAD_TYPES


def zip_members(data: bytes) -> Iterator[tuple[str, bytes | ImageError]]:
    """Yield ``(name, bytes)`` for each image inside a zip held in memory.

    Members that are too large once decompressed, whose first bytes are not
    those of an image, or that are zips themselves (never opened: one level of
    archive only), are yielded with an :class:`ImageError` instead of bytes
    (and never extracted), so a caller can report and skip them.

    Raises:
        ImageError: the data is not a readable zip file.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as err:
        raise ImageError(f"Not a readable zip file ({err}).") from err
    with archive:
        for info in archive.infolist():
            if _is_image_member(info):
                yield info.filename, _read_member(archive, info)
            elif _is_nested_zip(info):
                yield info.filename, ImageError(f"{info.filename}: a zip inside the zip is not opened; "
                                                "unzip it and add its images instead.")


def count_zip_members(data: bytes) -> int:
    """How many entries :func:`zip_members` would yield (0 for an unreadable zip); reads no member."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(_is_image_member(info) or _is_nested_zip(info) for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return 0


def _is_image_member(info: zipfile.ZipInfo) -> bool:
    return not info.is_dir() and is_image_name(info.filename) and "__MACOSX" not in info.filename


def _is_nested_zip(info: zipfile.ZipInfo) -> bool:
    return not info.is_dir() and info.filename.lower().endswith(".zip") and "__MACOSX" not in info.filename


# First bytes of every accepted format: a zip member that starts otherwise is never extracted.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def looks_like_image(head: bytes) -> bool:
    """True when ``head`` (a file's first 12 bytes) starts like JPEG, PNG, BMP, TIFF or WebP."""
    if head.startswith(b"RIFF"):
        return head[8:12] == b"WEBP"
    return head.startswith(_SIGNATURES)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | ImageError:
    """A member's bytes, or an ImageError for one too large or not starting like an image (then left unread)."""
    if info.file_size > MAX_ZIP_MEMBER_BYTES:
        return ImageError(f"{info.filename}: too large inside the zip.")
    try:
        with archive.open(info) as stream:
            if not looks_like_image(stream.read(12)):
                return ImageError(f"{info.filename}: not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP).")
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as err:
        return ImageError(f"{info.filename}: cannot be extracted ({err}).")


def _unsupported(path: Path) -> ImageError:
    kind = path.suffix.lower() or "without a suffix"
    return ImageError(f"not an image type this reads ({kind}; accepted: {', '.join(UPLOAD_TYPES)}, zip).")


def zip_sources(name: str, data: bytes) -> Iterator[tuple[str, bytes | ImageError]]:
    """Yield ``(f"{name}!{member}", bytes | ImageError)`` for a zip's members, one extracted at a time.

    An unreadable zip yields one ``(name, ImageError)``.
    """
    try:
        for member in zip_members(data):
            yield f"{name}!{member[0]}", member[1]
            del member  # not kept alive while the next member is extracted
    except ImageError as err:
        yield name, err


def iter_sources(paths) -> Iterator[tuple[str, bytes | ImageError]]:
    """Yield ``(name, bytes)`` for image files, folders (recursively) and zips, one file at a time.

    Unreadable entries, files of other types (``.gif``, ``.svg``, ``.txt``, ...;
    hidden files excepted) and entries that are not regular files (a FIFO would block
    the reader forever; it is refused from its ``stat``, never opened) are yielded with
    an :class:`ImageError` in place of bytes.
    """
    for path in map(Path, paths):
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if not p.is_dir() and not p.name.startswith(".")):
                yield from iter_sources([child])
        elif path.is_file() and not (is_image_name(path.name) or path.suffix.lower() == ".zip"):
            yield str(path), _unsupported(path)
        elif path.suffix.lower() == ".zip":
            data = read_file(path)
            yield from zip_sources(str(path), data) if isinstance(data, bytes) else [(str(path), data)]
        else:
            yield str(path), read_file(path)


def read_file(path: Path) -> bytes | ImageError:
    """A file's bytes, or an :class:`ImageError` naming why it cannot be read (``core.contracts.validation.read_regular``)."""
    try:
        return read_regular(path)
    except InputError as err:
        return ImageError(f"{err}.")
    except OSError as err:
        return ImageError(f"{path}: cannot be read ({err.strerror or err}).")


def decode_sources(sources, on_skip=None, decode=decode_image) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, rgb)`` for each readable entry of ``(name, bytes | ImageError)`` pairs.

    Args:
        sources: iterable of ``(name, bytes | ImageError)``, as from :func:`iter_sources`.
        on_skip: called with ``(name, message)`` for an entry that is already an
            :class:`ImageError` or whose bytes ``decode`` refuses; the entry is skipped.
        decode: bytes -> array; :func:`decode_image` by default. A caller that keeps only
            a reduced image passes a function that reduces right after decoding, so no
            full-size array outlives its own step.

    Sources are consumed one at a time: what is held is one entry's bytes and one result.
    """
    for name, data in sources:
        try:
            if isinstance(data, ImageError):
                raise data
            result = decode(data)
        except ImageError as err:
            if on_skip is not None:
                on_skip(name, str(err))
            continue
        yield name, result


class SkipReport:
    """An ``on_skip`` for the command lines: says ``skipped NAME: MESSAGE`` on stderr and keeps the names."""

    def __init__(self):
        self.names = []

    def __call__(self, name: str, message: str) -> None:
        self.names.append(name)
        print(f"skipped {name}: {message}", file=sys.stderr)


def distinct_ids(names) -> list:
    """Image ids from source names: the file stem, or, for stems that repeat, the
    path below the deepest folder the repeating names share (suffix dropped).

    ``["a/x.jpg", "b/x.jpg", "c/y.png"]`` gives ``["a/x", "b/x", "y"]``; names
    inside zips (``archive.zip!dir/x.jpg``) count ``!`` as a folder separator.
    The same name given twice is numbered (``x``, ``x#2``; ``x#3`` when a file is called ``x#2``). An id's folders are
    never empty, ``.``, ``..`` or a root, so :func:`output_path` stays inside its folder.
    """
    parts = [_id_parts(n) for n in names]
    stems = [p[-1] if p else "" for p in parts]
    counts = Counter(stems)
    ids = []
    for stem, path in zip(stems, parts):
        if counts[stem] < 2:
            ids.append(stem)
            continue
        group = [p for s, p in zip(stems, parts) if s == stem]
        shared = len(_common_prefix(group))
        ids.append("/".join(path[min(shared, len(path) - 1):]))
    taken, seen = set(ids), set()
    for k, image_id in enumerate(ids):  # the same name given twice: number the repeats
        if image_id in seen:
            n = 2
            while f"{image_id}#{n}" in taken:  # a real file may already be called x#2
                n += 1
            ids[k] = f"{image_id}#{n}"
            taken.add(ids[k])
        seen.add(image_id)
    return ids


def _id_parts(name) -> tuple:
    """The folders and stem of a source name; roots, ``.`` and ``..`` among the folders dropped."""
    *folders, stem = Path(str(name).replace("!", "/")).with_suffix("").parts or ("",)
    return (*(f for f in folders if f.strip("/\\") and f not in (".", "..")), stem)


def _common_prefix(paths: list) -> tuple:
    prefix = paths[0]
    for path in paths[1:]:
        k = 0
        while k < min(len(prefix), len(path)) and prefix[k] == path[k]:
            k += 1
        prefix = prefix[:k]
    return prefix


def output_path(out_dir, image_id: str, suffix: str) -> Path:
    """Where a file made from image ``image_id`` goes: ``a/x`` gives ``<out_dir>/a/x<suffix>``.

    An id's folders become subfolders, so the file's path below ``out_dir``, without
    ``suffix``, is the id itself.
    """
    *folders, stem = image_id.split("/")
    return Path(out_dir).joinpath(*folders, stem + suffix)


def write_per_image(sources, out_dir, write, *, on_skip=None) -> list:
    """Decode each source, let ``write`` make its files and row, and name the files by image id.

    Args:
        sources: iterable of ``(name, bytes | ImageError)``, as from :func:`iter_sources`.
        out_dir: the output folder; the files of image ``a/x`` (an id of :func:`distinct_ids`)
            are ``<out_dir>/a/x<suffix>`` (:func:`output_path`), so two ``x.jpg`` from
            different folders never overwrite each other.
        write: called as ``write(rgb, path)`` for each readable image, where ``path(suffix)``
            is the file to write for that suffix; returns the image's row (a dict).
        on_skip: called with ``(name, message)`` for each unreadable entry.

    Returns:
        The rows, each with ``image_id`` first, in source order.

    Ids depend on every name, so files are written into a hidden staging folder of
    ``out_dir`` while images stream in and moved to their names at the end; when
    ``write`` fails, what was written before is still moved, named by the names seen.
    A staging folder left by a killed process (its pid is in the name) is removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    names, rows, written = [], [], []
    try:
        for k, (name, rgb) in enumerate(decode_sources(sources, on_skip)):
            suffixes = []
            rows.append(write(rgb, lambda suffix: _staged(staging, k, suffix, suffixes)))  # noqa: B023 (used at once)
            names.append(name)
            written.append(suffixes)
    finally:
        ids = distinct_ids(names)
        for k, (image_id, suffixes) in enumerate(zip(ids, written)):
            for suffix in suffixes:
                target = output_path(out_dir, image_id, suffix)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / f"{k}{suffix}", target)
        shutil.rmtree(staging, ignore_errors=True)
    return [{"image_id": image_id, **row} for image_id, row in zip(ids, rows)]


def run_image_command(work, summary) -> int:
    """The frame of a command line that walks images and skips those it cannot decode.

    Args:
        work: ``work(skipped)`` does the command's work, giving ``skipped`` (a
            :class:`SkipReport`) as the ``on_skip`` of :func:`decode_sources`, and returns a result.
        summary: ``summary(result, number skipped)`` is the line printed when it is done.

    Returns:
        0, or :data:`core.contracts.validation.EXIT_BAD_INPUT` after saying ``error: ...``
        in one line for bad input (a model folder, an option, an output, no readable image).
    """
    skipped = SkipReport()
    try:
        result = work(skipped)
    except (ValueError, OSError) as err:  # ModelFolderError, InputError, ImageError are ValueErrors
        return report(err)
    print(summary(result, len(skipped.names)))
    return 0


def run_per_image_command(paths, out: Path, table_file: str, *, make_table, what: str, force: bool = False) -> int:
    """A command line writing files per image into the folder ``out`` and their table ``out/table_file``.

    Args:
        paths: image files, folders and zips (:func:`iter_sources`).
        out: the output folder, checked first (``core.contracts.validation.check_output_folder``).
        table_file: the name of the per-image table in ``out``.
        make_table: ``make_table(sources, on_skip)`` writes the files of each decodable source
            (through :func:`write_per_image`) and returns the table.
        what: the files made, for the summary line (``"masks"``).
        force: write into a folder that holds other files or lies inside a model folder.
    """
    def work(skipped):
        check_output_folder(out, table_file, force=force)
        table = make_table(iter_sources(paths), skipped)
        write_table(table, out / table_file, skipped)
        return table

    return run_image_command(work, lambda table, skipped: f"wrote {len(table)} {what} and {out / table_file}; "
                                                          f"skipped {skipped}")


def require_rows(table, skipped: SkipReport) -> None:
    """Refuse a command line's per-image table without a row.

    Raises:
        InputError: no row, so no image was readable (the message counts the skipped ones).
    """
    if table.empty:
        raise InputError(f"no readable image among the paths given (skipped {len(skipped.names)})")


def write_table(table, path: Path, skipped: SkipReport) -> None:
    """Write a command line's per-image table as CSV (6 decimals), refusing an empty one (:func:`require_rows`)."""
    require_rows(table, skipped)
    write_csv(path, table, float_format="%.6f")


def _remove_orphaned_staging(out_dir: Path) -> None:
    """Delete the staging folders of ``out_dir`` whose writing process no longer exists."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-")[0]
        if folder.is_dir() and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: not ours to judge
    return True


def _staged(staging: Path, k: int, suffix: str, suffixes: list) -> Path:
    suffixes.append(suffix)
    return staging / f"{k}{suffix}"
