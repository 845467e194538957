"""Decoding uploads: every kind of bad or unusual file, generated in memory."""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.contracts.validation import EXIT_BAD_INPUT
from core.dataset.images import (
    ImageError,
    SkipReport,
    decode_image,
    decode_sources,
    distinct_ids,
    iter_sources,
    read_image,
    read_mask,
    require_rows,
    run_image_command,
    resize_mask,
    to_model_input,
    write_per_image,
    zip_members,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient_rgb(w=40, h=30) -> Image.Image:
    ys, xs = np.mgrid[0:h, 0:w]
    pixels = np.stack([xs * 255 // (w - 1), ys * 255 // (h - 1), np.full_like(xs, 90)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "WEBP"])
def test_every_upload_format_decodes_to_rgb(fmt):
    rgb = decode_image(encode(gradient_rgb(), fmt))
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    # lossless formats must round-trip exactly; lossy ones approximately
    tolerance = 0 if fmt in ("PNG", "BMP", "TIFF") else 20
    assert np.abs(rgb.astype(int) - np.asarray(gradient_rgb(), dtype=int)).mean() <= max(tolerance, 0.5)


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_bytes_raise_image_error(payload):
    with pytest.raises(ImageError):
        decode_image(payload)


def test_truncated_jpeg_raises_clear_error():
    data = encode(gradient_rgb(200, 150), "JPEG", quality=95)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_oversized_image_refused_before_decoding():
    data = encode(Image.new("L", (2000, 1500)), "PNG")
    with pytest.raises(ImageError, match="too large: 2000×1500 = 3.0 megapixels"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=4_000_000).shape == (1500, 2000, 3)


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_decompression_bomb_warning_and_error_both_refused(monkeypatch, factor):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both must be refused.
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(10_000 / factor))
    with pytest.raises(ImageError, match="suspiciously large"):
        decode_image(data)


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = decode_image(encode(Image.new("L", (8, 6), 77), "PNG"))
    assert gray.shape == (6, 8, 3) and (gray == 77).all()
    palette = Image.new("P", (8, 6))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert (decode_image(encode(palette, "PNG")) == (10, 20, 30)).all()
    cmyk = decode_image(encode(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk.shape == (6, 8, 3)
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60  # pure red


def test_sixteen_bit_grayscale_scaled_to_eight_bit():
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    rgb = decode_image(encode(image, "PNG"))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 255], [128, 1]]


def test_sixteen_bit_tiff_decodes():
    image = Image.fromarray(np.full((5, 7), 51400, dtype=np.uint16))
    rgb = decode_image(encode(image, "TIFF"))
    assert rgb.shape == (5, 7, 3) and (rgb == 200).all()


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
def test_alpha_composited_on_background(background):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (200, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    rgb = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), background=background)
    assert (rgb[:2] == (200, 0, 0)).all()
    assert (rgb[2:] == background).all()


def test_palette_with_transparency_composited():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    data = encode(image, "PNG", transparency=1)
    assert (decode_image(data) == 255).all()


def test_exif_orientation_is_applied():
    # Stored landscape 40×30 with orientation 6 ("rotate 90° clockwise to view"): shown portrait.
    image = gradient_rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = decode_image(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert rgb.shape == (40, 30, 3)
    stored = np.asarray(image.rotate(-90, expand=True), dtype=int)
    assert np.abs(rgb.astype(int) - stored).mean() < 4


def test_to_model_input_stretches_to_square_float():
    rgb = np.asarray(gradient_rgb(60, 20))
    x = to_model_input(rgb, 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255
    # a stretch, not a crop: the left and right ends of the red ramp survive
    assert x[:, 0, 0].mean() < 20 and x[:, -1, 0].mean() > 235


def test_masks_resize_and_read(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 200
    small = resize_mask(mask, (15, 20))
    assert small.dtype == bool and small.sum() == 50


def test_masks_are_read_through_the_one_opener_with_its_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    with pytest.raises(ImageError, match="not an image|truncated|could not be read"):
        read_mask(tmp_path / "broken.png")
    os.mkfifo(tmp_path / "pipe.png")  # nobody writes: opening it would block forever
    with pytest.raises(ImageError, match="not a regular file"):
        read_mask(tmp_path / "pipe.png")


def test_every_reader_opens_image_files_through_the_one_opener():
    project = Path(__file__).resolve().parent.parent
    files = [project / "app.py", *(p for top in ("core", "ui", "pages") for p in (project / top).rglob("*.py"))]
    openers = [str(p.relative_to(project)) for p in files if "Image.open(" in p.read_text(encoding="utf-8")]
    assert openers == ["core/dataset/images.py"]


def test_read_image_decodes_a_file_as_an_upload(tmp_path):
    data = encode(gradient_rgb(), "PNG")
    (tmp_path / "i.png").write_bytes(data)
    assert np.array_equal(read_image(tmp_path / "i.png"), decode_image(data))
    assert read_image(tmp_path / "i.png", decode=lambda raw: len(raw)) == len(data)


def test_an_image_command_says_bad_input_in_one_line_and_counts_the_skipped(capsys):
    def work(skipped):
        list(decode_sources([("a.png", encode(gradient_rgb(), "PNG")), ("b.jpg", b"junk")], on_skip=skipped))
        return "done"

    assert run_image_command(work, lambda result, skipped: f"{result}; skipped {skipped}") == 0
    assert capsys.readouterr().out == "done; skipped 1\n"

    def nothing_readable(skipped):
        skipped("b.jpg", "junk")
        require_rows(pd.DataFrame(), skipped)

    assert run_image_command(nothing_readable, str) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.splitlines()[-1] == "error: no readable image among the paths given (skipped 1)"


def test_zip_members_and_sources_skip_bad_entries(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/one.png", encode(gradient_rgb(), "PNG"))
        archive.writestr("notes.txt", b"skip me")
        archive.writestr("__MACOSX/a/._one.png", b"junk")
    names = [name for name, _ in zip_members(buffer.getvalue())]
    assert names == ["a/one.png"]
    with pytest.raises(ImageError, match="zip"):
        list(zip_members(b"PK broken"))
    (tmp_path / "batch.zip").write_bytes(buffer.getvalue())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.jpg").write_bytes(encode(gradient_rgb(), "JPEG"))
    found = dict(iter_sources([tmp_path, tmp_path / "missing.png"]))
    assert set(found) == {f"{tmp_path / 'batch.zip'}!a/one.png", str(tmp_path / "sub" / "two.jpg"),
                          str(tmp_path / "missing.png")}
    assert isinstance(found[str(tmp_path / "missing.png")], ImageError)


def test_decode_sources_yields_readable_images_and_reports_the_rest():
    good = encode(gradient_rgb(), "PNG")
    sources = [("a.png", good), ("gone.png", ImageError("gone.png: cannot be read.")), ("bad.jpg", b"\xff\xd8 broken"),
               ("b.png", good)]
    skipped = []
    found = list(decode_sources(sources, on_skip=lambda name, message: skipped.append((name, message))))
    assert [name for name, _ in found] == ["a.png", "b.png"]
    np.testing.assert_array_equal(found[0][1], decode_image(good))
    assert [name for name, _ in skipped] == ["gone.png", "bad.jpg"]
    assert skipped[0][1] == "gone.png: cannot be read." and "not an image" in skipped[1][1]
    shapes = [rgb.shape for _, rgb in decode_sources(sources, decode=lambda data: decode_image(data)[:2])]
    assert shapes == [(2, 40, 3), (2, 40, 3)]  # no on_skip: skipped silently; the given decoder is used


def write_size(rgb, path):
    path(".txt").write_text(f"{rgb.shape[0]}x{rgb.shape[1]}")
    return {"height": rgb.shape[0]}


def test_write_per_image_names_files_by_distinct_ids(tmp_path):
    sources = [("in/a/x.png", encode(gradient_rgb(40, 30), "PNG")), ("in/b/x.png", encode(gradient_rgb(20, 10), "PNG")),
               ("in/b/bad.png", b"junk"), ("set.zip!y.png", encode(gradient_rgb(8, 6), "PNG"))]
    skipped = []
    rows = write_per_image(sources, tmp_path / "out", write_size, on_skip=lambda name, _: skipped.append(name))
    assert rows == [{"image_id": "a/x", "height": 30}, {"image_id": "b/x", "height": 10}, {"image_id": "y", "height": 6}]
    assert [row["image_id"] for row in rows] == distinct_ids(["in/a/x.png", "in/b/x.png", "set.zip!y.png"])
    assert skipped == ["in/b/bad.png"]
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["a/x.txt", "b/x.txt", "y.txt"]  # no staging folder left behind
    assert (tmp_path / "out" / "b" / "x.txt").read_text() == "10x20"


def test_a_killed_writers_staging_folder_is_removed_by_the_next_run(tmp_path):
    import os

    out = tmp_path / "out"
    dead = out / ".writing-4194305-abc"  # above Linux's largest pid: no such process
    alive = out / f".writing-{os.getppid()}-def"  # a live writer (here: this test's parent process)
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "0.npy").write_bytes(b"half a map")
    rows = write_per_image([("x.png", encode(gradient_rgb(8, 6), "PNG"))], out, write_size)
    assert rows == [{"image_id": "x", "height": 6}]
    assert sorted(p.name for p in out.iterdir()) == [alive.name, "x.txt"]


def test_write_per_image_keeps_what_was_written_when_a_write_fails(tmp_path):
    calls = []

    def fail_second(rgb, path):
        calls.append(1)
        if len(calls) == 2:
            path(".txt").write_text("half")
            raise RuntimeError("model failed")
        return write_size(rgb, path)

    sources = [("one.png", encode(gradient_rgb(), "PNG")), ("two.png", encode(gradient_rgb(), "PNG"))]
    with pytest.raises(RuntimeError, match="model failed"):
        write_per_image(sources, tmp_path, fail_second)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["one.txt"]


def test_skip_report_names_each_skipped_entry_on_stderr(capsys):
    report = SkipReport()
    found = list(decode_sources([("a.png", encode(gradient_rgb(), "PNG")), ("b.jpg", b"junk")], on_skip=report))
    assert [name for name, _ in found] == ["a.png"] and report.names == ["b.jpg"]
    assert capsys.readouterr().err.startswith("skipped b.jpg: This file is not an image")


def test_a_broken_zip_is_one_skipped_source_in_folders_and_uploads(tmp_path):
    from core.dataset.images import zip_sources

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    (name, err), = list(iter_sources([broken]))
    assert name == str(broken) and isinstance(err, ImageError) and "zip" in str(err)
    (name, err), = list(zip_sources("upload.zip", broken.read_bytes()))
    assert name == "upload.zip" and isinstance(err, ImageError)
