"""pipeline.data.images: what is copied, what is converted (and to which pixels), what is bad."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import images
from tests import dataset_fixtures as fx


def _decoded(prepared: images.PreparedImage) -> Image.Image:
    img = Image.open(io.BytesIO(prepared.data))
    img.load()
    return img


def test_extensions_are_decodable_image_types():
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"):
        assert images.is_image_filename(f"x{ext.upper()}"), ext
    for name in ("notes.txt", "labels.csv", "features.h5", "figure.eps", "noext", ".DS_Store"):
        assert not images.is_image_filename(name), name


@pytest.mark.parametrize("writer, ext", [(fx.write_rgb_jpeg, ".jpg"), (fx.write_rgb_png, ".png")])
def test_8bit_rgb_jpeg_and_png_are_copied_byte_for_byte(tmp_path: Path, writer, ext):
    src = writer(tmp_path / f"a{ext}", 5)
    prepared = images.prepare_file(src)
    assert prepared.copied and prepared.ext == ext
    assert prepared.data == src.read_bytes()


def test_rgb16_png_is_reencoded_as_8bit(tmp_path: Path):
    src = fx.write_rgb16_png(tmp_path / "deep.png")
    prepared = images.prepare_file(src)
    assert not prepared.copied and prepared.ext == ".png"
    assert prepared.data[24:26] == bytes([8, 2])  # IHDR: bit depth 8, colour type RGB
    img = _decoded(prepared)
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[0, 0]) == (255, 0, 128)


# (writer, expected RGB at left-middle pixel, at right-middle pixel)
CONVERSIONS = {
    "gray_jpeg": (fx.write_gray_jpeg, (100, 100, 100), (100, 100, 100)),
    "cmyk_jpeg": (fx.write_cmyk_jpeg, (255, 0, 0), (255, 0, 0)),
    "rgba_png": (fx.write_rgba_png, (255, 255, 255), (0, 0, 255)),
    "la_png": (fx.write_la_png, (255, 255, 255), (50, 50, 50)),
    "palette_transparent": (fx.write_palette_png, (255, 255, 255), (0, 200, 0)),
    "gray16_png": (fx.write_gray16_png, (255, 255, 255), (128, 128, 128)),
}


@pytest.mark.parametrize("kind", sorted(CONVERSIONS))
def test_other_modes_are_converted_to_rgb_png(tmp_path: Path, kind: str):
    writer, left, right = CONVERSIONS[kind]
    src = writer(tmp_path / f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}")
    prepared = images.prepare_file(src)
    assert not prepared.copied and prepared.ext == ".png"
    img = _decoded(prepared)
    assert img.format == "PNG" and img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    h, w = arr.shape[:2]
    tol = 3 if "jpeg" in kind else 0  # JPEG is lossy
    assert np.abs(arr[h // 2, 1] - left).max() <= tol, arr[h // 2, 1]
    assert np.abs(arr[h // 2, w - 2] - right).max() <= tol, arr[h // 2, w - 2]
    # load_image agrees with what is written.
    assert np.array_equal(np.asarray(images.load_image(src)), np.asarray(img))


def test_palette_without_transparency_and_other_formats(tmp_path: Path):
    src = fx.write_palette_png(tmp_path / "p.png", transparent=False)
    assert tuple(np.asarray(_decoded(images.prepare_file(src)))[0, 0]) == (10, 10, 10)
    for fmt, ext in (("BMP", ".bmp"), ("TIFF", ".tif"), ("GIF", ".gif")):
        path = tmp_path / f"x{ext}"
        Image.fromarray(fx.rgb_array(1)).save(path, format=fmt)
        prepared = images.prepare_file(path)
        assert prepared.ext == ".png" and _decoded(prepared).mode == "RGB"


@pytest.mark.parametrize(
    "writer, reason",
    [
        (fx.write_zero_byte, "empty file"),
        (fx.write_truncated_jpeg, "truncated"),
        (fx.write_truncated_png, "truncated"),
        (fx.write_garbage, "not a recognised image"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path: Path, writer, reason: str):
    src = writer(tmp_path / "bad.jpg")
    with pytest.raises(images.BadImageError, match=reason):
        images.prepare_file(src)
    with pytest.raises(images.BadImageError, match="bad.jpg"):
        images.load_image(src)


@pytest.mark.parametrize("writer", [fx.write_truncated_jpeg, fx.write_truncated_png])
def test_truncated_files_pass_header_checks_but_fail_full_decode(tmp_path: Path, writer):
    # Guards against validating with Image.open/verify only: the header of these is intact.
    src = writer(tmp_path / "cut.img")
    Image.open(src)  # no error
    with pytest.raises(images.BadImageError, match="truncated"):
        images.prepare_file(src)


def test_bad_image_is_a_data_error(tmp_path: Path):
    from pipeline.errors import DataError

    # Stages report DataError as one line; a corrupt image met by a later stage is one too.
    with pytest.raises(DataError, match="empty file"):
        images.load_image(fx.write_zero_byte(tmp_path / "z.png"))
    assert issubclass(DataError, ValueError)


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(images.BadImageError, match="file not found"):
        images.prepare_file(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(images.BadImageError, match="directory"):
        images.prepare_file(tmp_path / "dir.jpg")


def test_array_to_png_gray_and_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    img = Image.open(io.BytesIO(images.array_to_png(gray)))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[:, :, 1], gray)
    rgb = fx.rgb_array(4)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(images.array_to_png(rgb)))), rgb)
    assert images.array_to_png(gray) == images.array_to_png(gray)  # deterministic bytes
    with pytest.raises(TypeError):
        images.array_to_png(gray.astype(np.float32))
