"""Image validation and conversion to the pipeline's one image format: 8-bit RGB.

Every image the `data` stage writes is 8-bit RGB, so no later stage has to think about
colour modes. This module decides, for one source file, whether it is a usable image and
how to store it:

* an 8-bit RGB JPEG or PNG (no transparency, one frame) is copied byte for byte: it is
  already in the target format, and copying is cheap and loses nothing;
* any other decodable image (grayscale, CMYK, palette, RGBA/LA, 16-bit, TIFF, WebP, ...)
  is converted to RGB and re-saved as PNG (lossless). Transparency is composited onto
  white; 16-bit samples are scaled to 8 bits (65535 → 255), not clipped;
* anything else (missing, zero bytes, not an image, truncated, undecodable, a
  decompression bomb) raises `BadImageError` with a short reason.

Validation decodes the whole image (`Image.open` + `.load()`): `Image.verify()` only checks
headers and lets truncated JPEGs through. It relies on PIL's default
`ImageFile.LOAD_TRUNCATED_IMAGES = False`; code that flips it globally would let truncated
files pass.

EXIF orientation is deliberately not applied, neither here nor in `load_image`: torchvision's
dataset loaders ignore it too, and copied and converted files must behave the same.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import DataError

# PIL formats that register file extensions but cannot decode pixels without extra
# software (stub plugins, Ghostscript, Windows-only metafiles): a `.h5` or `.eps` file in
# an image folder is far more likely to be something else than an image to convert.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})


def _image_extensions() -> frozenset[str]:
    Image.init()  # load all plugins so the extension table is complete
    return frozenset(
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _UNDECODABLE_FORMATS
    )


# Lower-case extensions (with the dot) of files treated as images when scanning folders.
IMAGE_EXTENSIONS: frozenset[str] = _image_extensions()

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE_RGB = 2


class BadImageError(DataError):
    """A file that cannot be used as an image; `reason` says why, in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    """What to write for one image: `data` (bytes) with extension `ext` ('.jpg' or '.png').

    `copied` is True when `data` are the source's own bytes (already 8-bit RGB JPEG/PNG).
    """

    data: bytes
    ext: str
    copied: bool


def is_image_filename(name: str) -> bool:
    """Whether a file name has an extension PIL can decode (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decode(data: bytes) -> Image.Image:
    """Fully decode image bytes; raise BadImageError with a short reason if that fails."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # full decode: catches truncated and corrupt pixel data, not just headers
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"too large to decode safely: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError("not a recognised image format") from None
    except OSError as exc:
        raise BadImageError(f"truncated or corrupt: {exc}") from None
    # PIL raises assorted types on bad data (SyntaxError, ValueError, struct.error, ...).
    except Exception as exc:  # noqa: BLE001
        raise BadImageError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return img


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImageError("file not found") from None
    except IsADirectoryError:
        raise BadImageError("is a directory, not a file") from None
    except OSError as exc:
        raise BadImageError(f"cannot read: {exc.strerror or exc}") from None


def _png_is_8bit_rgb(data: bytes) -> bool:
    """Check the PNG header itself: PIL reports 16-bit RGB PNGs as mode 'RGB' too."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    bit_depth, color_type = struct.unpack(">BB", data[24:26])
    return bit_depth == 8 and color_type == _PNG_COLOR_TYPE_RGB


def _is_copyable(data: bytes, img: Image.Image) -> bool:
    """True when the source bytes already are a plain 8-bit RGB JPEG or PNG."""
    if img.mode != "RGB" or getattr(img, "n_frames", 1) != 1:
        return False
    if img.format == "JPEG":
        return True  # PIL decodes only 8-bit JPEG; mode RGB rules out gray and CMYK
    if img.format == "PNG":
        # A tRNS colour key would make other decoders see RGBA.
        return _png_is_8bit_rgb(data) and "transparency" not in img.info
    return False


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_range_to_8bit(img: Image.Image) -> Image.Image:
    """Modes I;16*, I (int32) and F (float) → 8-bit grayscale, scaled rather than clipped.

    PIL's own convert('L') clips values above 255, which turns most 16-bit images white.
    Integer modes are read as 16-bit samples (the only way such files arise in practice:
    16-bit PNG/TIFF); float images are taken as [0, 1] when they fit, else [0, 255].
    """
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
        arr = np.nan_to_num(arr, nan=0.0) * scale
    else:
        arr = arr / 257.0  # 65535 → 255 exactly
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded PIL image to 8-bit RGB (transparency composited on white)."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/APNG, multi-page TIFF: the first frame is the image
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        return _high_range_to_8bit(img).convert("RGB")
    # "transparency" in info: a palette, gray or RGB image with a tRNS colour key.
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    if mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of an RGB image; deterministic (no timestamps or metadata are written)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def prepare_bytes(data: bytes) -> PreparedImage:
    """Validate image bytes and return what to store (raises BadImageError)."""
    img = decode(data)
    if _is_copyable(data, img):
        return PreparedImage(data=data, ext=".jpg" if img.format == "JPEG" else ".png", copied=True)
    return PreparedImage(data=encode_png(to_rgb(img)), ext=".png", copied=False)


def prepare_file(path: Path) -> PreparedImage:
    """Read, validate and (if needed) convert one image file (raises BadImageError)."""
    return prepare_bytes(_read_bytes(path))


def array_to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes (RGB) of a uint8 array, (H, W) grayscale or (H, W, 3) RGB."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {pixels.shape}")
    return encode_png(Image.fromarray(np.ascontiguousarray(pixels), mode="RGB"))


def load_image(path: str | Path) -> Image.Image:
    """Open an image file, fully decoded, as 8-bit RGB (raises BadImageError if unusable)."""
    try:
        return to_rgb(decode(_read_bytes(path)))
    except BadImageError as exc:
        raise BadImageError(f"{path}: {exc.reason}") from None
