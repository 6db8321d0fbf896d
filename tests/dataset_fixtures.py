"""Small on-disk datasets in each source's real layout, for tests (no network).

Each `make_*` builder writes a miniature copy of a dataset where the pipeline (through
torchvision's own dataset classes) looks for it, and returns what a correct `data` stage
should produce from it. Images are tiny and each one distinct (colour from its index), so
tests can tell them apart. `params_for` builds validated `Params` from the repository's
params.yaml with overrides, so fixtures stay in step with the real parameter file.

Also used by the end-to-end smoke test: `make_fashion_mnist_raw(raw_root, ...)` gives the
default `fashion_mnist` dataset without the Debian package.
"""

from __future__ import annotations

import copy
import gzip
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pipeline.config import Params, parse_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def params_for(dataset: str, **data: Any) -> Params:
    """params.yaml with `dataset` and `data.*` overridden (max_per_class off unless given)."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["dataset"] = dataset
    raw["data"]["max_per_class"] = {"train": None, "test": None}
    raw["data"]["download"] = False
    raw["data"].update(data)
    return parse_params(raw)


# ----------------------------------------------------------------------------- images


def color(i: int) -> tuple[int, int, int]:
    """A distinct RGB colour per index."""
    return ((37 * i + 11) % 256, (91 * i + 53) % 256, (17 * i + 201) % 256)


def rgb_array(i: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """(H, W, 3) uint8 with a per-index colour and a gradient (so JPEGs are not flat)."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = color(i)
    arr[:, :, 0] = (arr[:, :, 0].astype(int) + np.arange(w)[None, :] * 3) % 256
    return arr


def write_rgb_jpeg(path: Path, i: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_array(i, size), "RGB").save(path, format="JPEG", quality=90)
    return path


def write_rgb_png(path: Path, i: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_array(i, size), "RGB").save(path, format="PNG")
    return path


def write_gray_jpeg(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 6), value).save(path, format="JPEG")
    return path


def write_cmyk_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(path, format="JPEG")  # red
    return path


def write_rgba_png(path: Path) -> Path:
    """Left half fully transparent black (→ white), right half opaque blue."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((6, 8, 4), np.uint8)
    arr[:, 4:] = (0, 0, 255, 255)
    Image.fromarray(arr, "RGBA").save(path, format="PNG")
    return path


def write_la_png(path: Path) -> Path:
    """Gray 50 at alpha 0 (→ white) on the left, gray 50 opaque on the right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((6, 8, 2), np.uint8)
    arr[:, :, 0] = 50
    arr[:, 4:, 1] = 255
    Image.fromarray(arr, "LA").save(path, format="PNG")
    return path


def write_palette_png(path: Path, transparent: bool = True) -> Path:
    """Palette image: index 0 green, index 1 transparent (→ white) when `transparent`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("P", (8, 6), 0)
    img.putpalette([0, 200, 0, 10, 10, 10] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 4, 6))
    if transparent:
        img.save(path, format="PNG", transparency=1)
    else:
        img.save(path, format="PNG")
    return path


def write_gray16_png(path: Path) -> Path:
    """16-bit grayscale: left half 65535 (→ 255), right half 32896 (→ 128)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((6, 8), 65535, np.uint16)
    arr[:, 4:] = 32896
    Image.fromarray(arr).save(path, format="PNG")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_rgb16_png(path: Path) -> Path:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: PIL cannot save one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = 4, 3
    row = b"\x00" + struct.pack(">" + "H" * 3 * w, *([65535, 0, 32896] * w))  # filter byte + pixels
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(row * h))
        + _png_chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path


def _noise_image(seed: int = 0) -> Image.Image:
    # Noise compresses badly, so the pixel data dwarfs the headers and a cut lands in it.
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8), "RGB")


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in its scan data: headers parse (Image.open works), decoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _noise_image().save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


def write_truncated_png(path: Path) -> Path:
    """A PNG cut inside its IDAT chunk: the header parses, the pixels do not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _noise_image(1).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_garbage(path: Path) -> Path:
    """Random bytes under an image extension: not decodable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


# ----------------------------------------------------------------------------- datasets


@dataclass
class Expected:
    classes: list[str]
    counts: dict[str, int]  # images per split
    ids: dict[str, set[str]]  # ids per split


# Oxford-IIIT Pet: (file prefix, CLASS-ID, SPECIES) as in annotations/*.txt.
PET_BREEDS = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]


def make_oxford_pets(raw_root: Path, n_trainval: int = 3, n_test: int = 2) -> Expected:
    base = raw_root / "oxford_pets" / "oxford-iiit-pet"
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    ids: dict[str, set[str]] = {"train": set(), "test": set()}
    k = 0
    for prefix, class_id, species in PET_BREEDS:
        for split, n, offset in (("trainval", n_trainval, 1), ("test", n_test, 100)):
            for j in range(n):
                image_id = f"{prefix}_{offset + j}"
                write_rgb_jpeg(base / "images" / f"{image_id}.jpg", k)
                k += 1
                lines[split].append(f"{image_id} {class_id} {species} 1")
                ids["train" if split == "trainval" else "test"].add(image_id)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    classes = [" ".join(p.title() for p in prefix.split("_")) for prefix, _, _ in PET_BREEDS]
    n_cls = len(PET_BREEDS)
    return Expected(classes, {"train": n_cls * n_trainval, "test": n_cls * n_test}, ids)


# Includes a '/' (as the real "F/A-18") to exercise class folder names.
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F/A-18"]


def make_fgvc_aircraft(raw_root: Path, n_trainval: int = 3, n_test: int = 2) -> Expected:
    data = raw_root / "fgvc_aircraft" / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    ids: dict[str, set[str]] = {"train": set(), "test": set()}
    k = 0
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        rows = []
        for variant in AIRCRAFT_VARIANTS:
            for _ in range(n):
                image_id = f"{1000000 + 7 * k:07d}"
                write_rgb_jpeg(data / "images" / f"{image_id}.jpg", k)
                rows.append(f"{image_id} {variant}")
                ids["train" if split == "trainval" else "test"].add(f"fgvc_{image_id}")
                k += 1
        (data / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    n_cls = len(AIRCRAFT_VARIANTS)
    return Expected(list(AIRCRAFT_VARIANTS), {"train": n_cls * n_trainval, "test": n_cls * n_test}, ids)


CALTECH_CATEGORIES = {"Faces_easy": 5, "accordion": 4, "airplanes": 2, "anchor": 1}


def make_caltech101(raw_root: Path, categories: dict[str, int] | None = None) -> Path:
    """Caltech-101 layout incl. BACKGROUND_Google (which must not become a class)."""
    categories = CALTECH_CATEGORIES if categories is None else categories
    base = raw_root / "caltech101" / "caltech101" / "101_ObjectCategories"
    k = 0
    for cat, n in {"BACKGROUND_Google": 3, **categories}.items():
        for j in range(1, n + 1):
            write_rgb_jpeg(base / cat / f"image_{j:04d}.jpg", k)
            k += 1
    return base


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def fashion_arrays(n_train: int, n_test: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic 28×28 images (each distinct) and labels cycling over the 10 classes."""
    out = {}
    for split, n, offset in (("train", n_train, 0), ("t10k", n_test, 7)):
        rng = np.random.default_rng(offset)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) + offset) % 10
        out[split] = (images, labels.astype(np.uint8))
    return out


def write_fashion_files(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = False) -> dict:
    """The four idx files (or their .gz, as Debian ships them) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fashion_arrays(n_train, n_test)
    for split, (images, labels) in arrays.items():
        for name, data in (
            (f"{split}-images-idx3-ubyte", idx_images(images)),
            (f"{split}-labels-idx1-ubyte", idx_labels(labels)),
        ):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return arrays


def make_fashion_mnist_raw(raw_root: Path, n_train: int = 30, n_test: int = 20) -> dict:
    """Fashion-MNIST where torchvision reads it: <raw_root>/fashion_mnist/FashionMNIST/raw/."""
    return write_fashion_files(raw_root / "fashion_mnist" / "FashionMNIST" / "raw", n_train, n_test)


def make_imagefolder(path: Path, sizes: dict[str, int]) -> dict[str, list[Path]]:
    """<path>/<class>/img_<j>.jpg with `sizes[class]` RGB JPEGs each."""
    out: dict[str, list[Path]] = {}
    k = 0
    for cls, n in sizes.items():
        out[cls] = []
        for j in range(n):
            out[cls].append(write_rgb_jpeg(path / cls / f"img_{j:03d}.jpg", k))
            k += 1
    return out
