"""Dataset adapters and the `data` stage: any supported dataset → `data/<dataset>/`.

Output (the contract every later stage reads, through `read_manifest` / `read_classes`):

    data/<dataset>/manifest.csv   columns id,path,label,class_name,split
    data/<dataset>/classes.txt    one class name per line; line i is label i
    data/<dataset>/skipped.csv    columns path,reason (always written; header only if none)
    data/<dataset>/images/<split>/<class folder>/<id>.<ext>

* `id` is unique and always starts with a letter, so CSV readers that guess types keep it a
  string (FGVC's ids are 7-digit numbers: they become `fgvc_1025794`).
* `path` is relative to `data/<dataset>/`, with forward slashes.
* `split` is `train` or `test`. Official splits are used where a dataset has them (Oxford
  pets trainval → train, FGVC trainval → train, Fashion-MNIST train/t10k); otherwise
  (Caltech-101, digits, an image folder without a split file) each class is split on its
  own, seeded: `round(test_fraction * n)` test images, at least one each side when n ≥ 2,
  drawn with an RNG seeded by `(data.seed, class name)`, so one class's split does not
  change when another class is added.
* `<class folder>` is the class name made safe for a file system: characters other than
  letters, digits, space, `.`, `_`, `-` become `_` (Fashion-MNIST's `T-shirt/top` →
  `T-shirt_top`, FGVC's `F/A-18` → `F_A-18`); the true name is in the manifest and
  classes.txt.
* Every image is 8-bit RGB: a source that already is an 8-bit RGB JPEG/PNG is copied byte
  for byte; anything else is converted (see `pipeline.data.images`) and saved as PNG.
* Rows are ordered train first, then test, each in the source's own order (sorted paths
  for folders). Same params and same sources → byte-identical manifest and images.

`unrel` (an unlabelled folder) convention: every image gets label -1 and an empty
class_name, classes.txt is empty, and all images are in split `train` (they are for fitting
the SAE; there is nothing to evaluate a classifier against). Images are stored flat, as
`images/train/<id>.<ext>`. `data.max_per_class.train` caps the total.

Folder scanning (`imagefolder`, `unrel`, Caltech-101's category folders): a file counts as
an image when PIL can decode its extension (`pipeline.data.images.IMAGE_EXTENSIONS`). Hidden
files (`.DS_Store`, `._x.jpg`, ...) are ignored silently. Other files (`notes.txt`,
`labels.csv`) are not images, not broken images: they are left out in either
`on_bad_image` mode and listed in skipped.csv so nothing disappears unseen. For
`imagefolder`, files directly in `data.path` (not in a class folder) are treated the same.
An `imagefolder` class folder without image files is an error under
`on_bad_image: error` (it is almost always a mistake); under `skip` it is left out of
classes.txt and listed in skipped.csv.

`data.max_per_class` keeps a seeded random subset of each (class, split), in source order.
It is applied before images are decoded (decoding everything to then keep 1000 per class
would be wasteful), so under `on_bad_image: skip` a class can end up below the cap.

Building is atomic: everything is written into `data/.<dataset>.tmp-<pid>/` and swapped in
by renames at the end, so an interrupted or failed run leaves the previous output intact
and never a manifest that points at missing images.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import shutil
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from pipeline.config import Params
from pipeline.data import images
from pipeline.errors import DataError
from pipeline.files import atomic_path, publish_dir
from pipeline.paths import classes_path, data_dir, manifest_path
from pipeline.seeds import mix_seed

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("id", "path", "label", "class_name", "split")
SKIPPED_COLUMNS: tuple[str, ...] = ("path", "reason")
UNLABELLED = -1

# Where Debian's `dataset-fashion-mnist` package installs the original .gz files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# A download attempt on a network that drops packets must fail, not hang: torchvision's
# urlopen calls set no timeout, so one is set around them (seconds per socket operation).
DOWNLOAD_TIMEOUT_S = 30.0
# Error messages list this many offending files, then a count of the rest.
MAX_LISTED = 10
# Images per task handed to the thread pool (amortises scheduling over small images).
_CHUNK = 64


class DatasetNotFoundError(DataError):
    """The dataset's files are not on disk (and could not be downloaded)."""


@dataclass(frozen=True)
class ManifestRow:
    id: str
    path: str  # relative to data/<dataset>/
    label: int  # index into classes.txt; -1 for unlabelled (`unrel`)
    class_name: str
    split: Split

    def file(self, dataset_dir: Path) -> Path:
        """Absolute-or-relative path of the image, given `data/<dataset>/`."""
        return dataset_dir / self.path


@dataclass(frozen=True)
class SkippedItem:
    path: str  # source path (relative to the repo root when inside it) or array slot
    reason: str


@dataclass
class BuildResult:
    dataset: str
    out_dir: Path
    counts: dict[str, int]  # images written per split
    classes: list[str]
    skipped: list[SkippedItem]
    seconds: float
    # Classes left without any image (all skipped or subsetted away): a warning, not an error.
    empty_classes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class SourceItem:
    """One image to write: either a file on disk or an in-memory uint8 array."""

    id: str
    label: int
    split: Split
    display: str  # how messages and skipped.csv name it
    file: Path | None = None
    pixels: np.ndarray | None = None


@dataclass
class Source:
    """What an adapter found: the classes, the images, and files it left out on purpose."""

    classes: list[str]
    items: list[SourceItem]
    ignored: list[SkippedItem] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _resolve(path: str | Path, root: Path) -> Path:
    """Parameters hold paths relative to the repository root unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _seed_for(seed: int, *parts: object) -> int:
    """The data's seed for one (purpose, split, class, ...): strings hashed stably (sha256)."""
    return mix_seed(seed, *(str(p) for p in parts))


def _list_problems(header: str, lines: Sequence[str], footer: str = "") -> str:
    shown = "\n".join(f"  {line}" for line in lines[:MAX_LISTED])
    more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"{header}\n{shown}{more}" + (f"\n{footer}" if footer else "")


def class_folder_name(name: str) -> str:
    """File-system-safe folder name for a class (the true name stays in the manifest)."""
    safe = re.sub(r"[^\w .-]", "_", name).strip(" ")
    return "_" + safe if not safe or safe.startswith(".") else safe


def _class_folders(classes: list[str]) -> list[str]:
    """One distinct folder per class; a collision after sanitising gets the label appended.

    Compared case-insensitively so the layout also works on macOS/Windows file systems.
    """
    folders: list[str] = []
    seen: set[str] = set()
    for label, name in enumerate(classes):
        folder = class_folder_name(name)
        if folder.lower() in seen:
            folder = f"{folder}_{label}"
        seen.add(folder.lower())
        folders.append(folder)
    return folders


def _item_id(rel: Path) -> str:
    """Id for a file found by scanning: its relative path without extension, '/' → '__'."""
    return "__".join(rel.with_suffix("").parts)


def stratified_split(
    labels: Sequence[int], class_names: Sequence[str], test_fraction: float, seed: int
) -> list[Split]:
    """Seeded per-class train/test split of items in the given order.

    For a class of n items: round(test_fraction * n) go to test, clamped to [1, n - 1] when
    n >= 2 (every class is seen in training and evaluated); a single item goes to train.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    splits: list[Split] = ["train"] * len(labels)
    for label, idx in by_class.items():
        n = len(idx)
        n_test = min(max(round(test_fraction * n), 1), n - 1) if n >= 2 else 0
        rng = np.random.default_rng(_seed_for(seed, "split", class_names[label] if label >= 0 else ""))
        for j in rng.permutation(n)[:n_test]:
            splits[idx[j]] = "test"
    return splits


def subset_per_class(items: list[SourceItem], caps: dict[str, int | None], seed: int) -> list[SourceItem]:
    """Keep at most caps[split] items of each (class, split), seeded, in source order."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[(item.split, item.label)].append(i)
    keep = np.ones(len(items), dtype=bool)
    for (split, label), idx in groups.items():
        cap = caps.get(split)
        if cap is None or len(idx) <= cap:
            continue
        rng = np.random.default_rng(_seed_for(seed, "subset", split, label))
        chosen = set(rng.choice(len(idx), size=cap, replace=False).tolist())
        for j, i in enumerate(idx):
            keep[i] = j in chosen
    return [item for item, k in zip(items, keep) if k]


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision(make: Callable[[], Any], dataset: str, folder: Path, layout: str, download: bool) -> Any:
    """Construct a torchvision dataset; turn 'not found' / failed download into one message."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return make()
    except (RuntimeError, OSError) as exc:  # URLError is an OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = (
            "Downloading is enabled (data.download: true) but did not provide them (no network?)."
            if download
            else "data.download is false, so nothing was downloaded."
        )
        raise DatasetNotFoundError(
            f"{dataset}: cannot load the dataset from {folder}/ ({first}).\n{why}\n"
            f"Put the files there in the layout torchvision expects:\n{layout}"
        ) from None


# ----------------------------------------------------------------------------- adapters


def _trainval_test(
    make: Callable[[str], object], dataset: str, folder: Path, layout: str, download: bool
) -> dict[str, Any]:
    """Our train/test from torchvision's official "trainval"/"test" splits."""
    return {
        split: _torchvision(lambda s=tv_split: make(s), dataset, folder, layout, download)
        for split, tv_split in (("train", "trainval"), ("test", "test"))
    }


def _oxford_pets(params: Params, root: Path) -> Source:
    from torchvision.datasets import OxfordIIITPet

    folder = _resolve(params.data.raw_root, root) / "oxford_pets"
    layout = (
        f"  {folder}/oxford-iiit-pet/images/<Breed_name>_<n>.jpg\n"
        f"  {folder}/oxford-iiit-pet/annotations/trainval.txt\n"
        f"  {folder}/oxford-iiit-pet/annotations/test.txt\n"
        "(images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/, "
        f"extracted into {folder}/oxford-iiit-pet/)"
    )
    parts = _trainval_test(
        lambda split: OxfordIIITPet(folder, split=split, target_types="category", download=params.data.download),
        "oxford_pets",
        folder,
        layout,
        params.data.download,
    )
    # torchvision derives class names from the ids in each split file; trainval holds all 37.
    classes = list(parts["train"].classes)
    items: list[SourceItem] = []
    for split, ds in parts.items():
        # The file list and labels are private attributes: the public API only returns
        # decoded images, and decoding twice would double the stage's cost.
        for path, label in zip(ds._images, ds._labels):
            if not 0 <= label < len(classes):
                raise DataError(
                    f"oxford_pets: {path.name} in annotations/{split if split == 'test' else 'trainval'}.txt "
                    f"has class id {label + 1}, but trainval.txt only has {len(classes)} classes"
                )
            items.append(
                SourceItem(
                    id=Path(path).stem,
                    label=label,
                    split=split,
                    display=_display(Path(path), root),
                    file=Path(path),
                )
            )
    return Source(classes, items)


def _fgvc_aircraft(params: Params, root: Path) -> Source:
    from torchvision.datasets import FGVCAircraft

    folder = _resolve(params.data.raw_root, root) / "fgvc_aircraft"
    data = f"{folder}/fgvc-aircraft-2013b/data"
    layout = (
        f"  {data}/variants.txt\n"
        f"  {data}/images_variant_trainval.txt\n"
        f"  {data}/images_variant_test.txt\n"
        f"  {data}/images/<image id>.jpg\n"
        f"(fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/, extracted into {folder}/)"
    )
    parts = _trainval_test(
        lambda split: FGVCAircraft(folder, split=split, annotation_level="variant", download=params.data.download),
        "fgvc_aircraft",
        folder,
        layout,
        params.data.download,
    )
    classes = list(parts["train"].classes)  # variants.txt, the same file for both splits
    items = [
        SourceItem(
            id=f"fgvc_{Path(path).stem}",
            label=label,
            split=split,
            display=_display(Path(path), root),
            file=Path(path),
        )
        for split, ds in parts.items()
        for path, label in zip(ds._image_files, ds._labels)  # private: see _oxford_pets
    ]
    return Source(classes, items)


def _caltech101(params: Params, root: Path) -> Source:
    from torchvision.datasets import Caltech101

    folder = _resolve(params.data.raw_root, root) / "caltech101"
    cats = folder / "caltech101" / "101_ObjectCategories"
    layout = (
        f"  {cats}/<category>/image_0001.jpg ...  (102 folders, including BACKGROUND_Google,\n"
        "   which torchvision requires and then drops: an empty folder will do)\n"
        "(caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02: extract "
        f"101_ObjectCategories.tar.gz from it into {folder}/caltech101/)"
    )
    if cats.is_dir() and not (cats / "BACKGROUND_Google").is_dir():
        # torchvision would fail with a bare "list.remove(x): x not in list".
        raise DatasetNotFoundError(
            f"caltech101: {cats}/BACKGROUND_Google/ is missing; torchvision requires it (and then "
            f"leaves it out). Create it (empty is fine) or restore it from the archive. Layout:\n{layout}"
        )
    ds = _torchvision(
        lambda: Caltech101(folder, target_type="category", download=params.data.download),
        "caltech101",
        folder,
        layout,
        params.data.download,
    )
    # torchvision's categories: sorted folder names minus BACKGROUND_Google (101 classes).
    classes = list(ds.categories)
    # torchvision indexes images by counting folder entries (image_0001..image_<count>), which
    # breaks on any stray file (.DS_Store); list the image files instead.
    files: list[tuple[int, Path]] = []
    ignored: list[SkippedItem] = []
    for label, cat in enumerate(classes):
        for path in sorted((cats / cat).iterdir()):
            if path.name.startswith("."):
                continue
            if images.is_image_filename(path.name):
                files.append((label, path))
            else:
                ignored.append(SkippedItem(_display(path, root), "not an image file (ignored)"))
    splits = stratified_split(
        [label for label, _ in files], classes, params.data.test_fraction, params.data.seed
    )
    items = [
        SourceItem(
            id=f"{classes[label]}_{path.stem}",
            label=label,
            split=split,
            display=_display(path, root),
            file=path,
        )
        for (label, path), split in zip(files, splits)
    ]
    return Source(classes, items, ignored)


def _decompress_atomic(src_gz: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp, gzip.open(src_gz, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def ensure_fashion_mnist_raw(folder: Path) -> bool:
    """Fill `<folder>/FashionMNIST/raw/` from the Debian package if files are missing.

    Returns True when all four files are present afterwards. Each file is decompressed to a
    temporary name and renamed, so an interrupted copy never looks complete to torchvision.
    """
    raw = folder / "FashionMNIST" / "raw"
    missing = [name for name in _FASHION_MNIST_FILES if not (raw / name).is_file()]
    if missing and all((SYSTEM_FASHION_MNIST / f"{n}.gz").is_file() for n in missing):
        raw.mkdir(parents=True, exist_ok=True)
        for name in missing:
            _decompress_atomic(SYSTEM_FASHION_MNIST / f"{name}.gz", raw / name)
        missing = []
    return not missing


def _load_fashion_mnist(folder: Path, split: Split, download: bool):
    from torchvision.datasets import FashionMNIST

    have = ensure_fashion_mnist_raw(folder)
    raw = folder / "FashionMNIST" / "raw"
    layout = (
        "".join(f"  {raw}/{name}\n" for name in _FASHION_MNIST_FILES)
        + "(uncompressed idx files; `apt-get install dataset-fashion-mnist` installs them under "
        f"{SYSTEM_FASHION_MNIST}/, from where this stage copies them automatically)"
    )
    return _torchvision(
        lambda: FashionMNIST(folder, train=split == "train", download=download and not have),
        "fashion_mnist",
        folder,
        layout,
        download,
    )


def fashion_mnist_arrays(
    split: Split, raw_root: Path, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST through torchvision: (uint8 images (N, 28, 28), int64 labels (N,)).

    `raw_root` is `data.raw_root` (resolved); the files live in
    `<raw_root>/fashion_mnist/FashionMNIST/raw/`, copied offline from Debian's
    dataset-fashion-mnist package when present, else downloaded by torchvision when
    `download` is true. Raises DatasetNotFoundError naming the folder otherwise.
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is invalid; valid: {', '.join(SPLITS)}")
    ds = _load_fashion_mnist(Path(raw_root) / "fashion_mnist", split, download)
    return ds.data.numpy().astype(np.uint8, copy=False), ds.targets.numpy().astype(np.int64)


def _fashion_mnist(params: Params, root: Path) -> Source:
    from torchvision.datasets import FashionMNIST

    folder = _resolve(params.data.raw_root, root) / "fashion_mnist"
    items: list[SourceItem] = []
    for split in SPLITS:
        ds = _load_fashion_mnist(folder, split, params.data.download)
        pixels = ds.data.numpy()
        labels = ds.targets.numpy()
        tv_name = "train" if split == "train" else "t10k"
        items += [
            SourceItem(
                id=f"{split}_{i:05d}",
                label=int(labels[i]),
                split=split,
                display=f"FashionMNIST {tv_name}[{i}]",
                pixels=pixels[i],
            )
            for i in range(len(labels))
        ]
    return Source(list(FashionMNIST.classes), items)


def _digits(params: Params, root: Path) -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # bundled with scikit-learn: no download
    # 8×8 images with values 0..16 → 0..255.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = [int(y) for y in bunch.target]
    classes = [str(name) for name in bunch.target_names]
    splits = stratified_split(labels, classes, params.data.test_fraction, params.data.seed)
    items = [
        SourceItem(
            id=f"digit_{i:04d}",
            label=labels[i],
            split=splits[i],
            display=f"sklearn digits[{i}]",
            pixels=pixels[i],
        )
        for i in range(len(labels))
    ]
    return Source(classes, items)


def _scan(folder: Path, root: Path) -> tuple[list[Path], list[SkippedItem]]:
    """Image files under `folder` (recursive, sorted, hidden files ignored) + non-images."""
    found: list[Path] = []
    ignored: list[SkippedItem] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if images.is_image_filename(name):
                found.append(path)
            else:
                ext = path.suffix or "none"
                ignored.append(
                    SkippedItem(_display(path, root), f"not an image file (extension {ext}; ignored)")
                )
    return sorted(found), ignored


def _source_folder(params: Params, root: Path) -> Path:
    assert params.data.path is not None  # enforced by Params for imagefolder / unrel
    folder = _resolve(params.data.path, root)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{params.dataset}: data.path = {params.data.path!r}: folder {folder} not found"
        )
    return folder


def _read_split_file(path: Path) -> dict[str, Split]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"data.split_file: {path} not found") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"path", "split"} <= set(reader.fieldnames):
        raise DataError(
            f"data.split_file {path}: expected a CSV with header 'path,split', got {reader.fieldnames}"
        )
    splits: dict[str, Split] = {}
    bad: list[str] = []
    for line_no, row in enumerate(reader, start=2):
        rel = Path(row["path"].strip()).as_posix()
        split = (row["split"] or "").strip()
        if split not in SPLITS:
            bad.append(f"line {line_no}: {rel}: split {split!r} (valid: train, test)")
        elif rel in splits:
            bad.append(f"line {line_no}: {rel}: listed twice")
        else:
            splits[rel] = split  # type: ignore[assignment]
    if bad:
        raise DataError(_list_problems(f"data.split_file {path}: {len(bad)} invalid line(s):", bad))
    return splits


def _imagefolder(params: Params, root: Path) -> Source:
    folder = _source_folder(params, root)
    ignored: list[SkippedItem] = []
    class_files: dict[str, list[Path]] = {}
    empty: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(SkippedItem(_display(entry, root), "not inside a class folder (ignored)"))
            continue
        files, non_images = _scan(entry, root)
        ignored += non_images
        if files:
            class_files[entry.name] = files
        else:
            empty.append(entry.name)
    if empty:
        if params.data.on_bad_image == "error":
            raise DataError(
                _list_problems(
                    f"imagefolder: {len(empty)} class folder(s) in {folder} contain no image files:",
                    [f"{folder / name}/" for name in empty],
                    "Add images or remove the folders, or set data.on_bad_image: skip to leave them out.",
                )
            )
        ignored += [
            SkippedItem(_display(folder / name, root), "empty class folder (class left out)")
            for name in empty
        ]
    if not class_files:
        raise DataError(
            f"imagefolder: no class folders with images in {folder} (expected <class>/<image> files)"
        )

    classes = sorted(class_files)
    files = [(label, path) for label, name in enumerate(classes) for path in class_files[name]]
    if params.data.split_file:
        split_path = _resolve(params.data.split_file, root)
        listed = _read_split_file(split_path)
        rels = [path.relative_to(folder).as_posix() for _, path in files]
        unlisted = [rel for rel in rels if rel not in listed]
        if unlisted:
            raise DataError(
                _list_problems(
                    f"data.split_file {split_path}: {len(unlisted)} image(s) are not listed:", unlisted
                )
            )
        unknown = sorted(set(listed) - set(rels))
        if unknown:
            raise DataError(
                _list_problems(
                    f"data.split_file {split_path}: {len(unknown)} listed path(s) are not image files under {folder}:",
                    unknown,
                )
            )
        splits: list[Split] = [listed[rel] for rel in rels]
    else:
        splits = stratified_split(
            [label for label, _ in files], classes, params.data.test_fraction, params.data.seed
        )
    items = [
        SourceItem(
            id=_item_id(path.relative_to(folder)),
            label=label,
            split=split,
            display=_display(path, root),
            file=path,
        )
        for (label, path), split in zip(files, splits)
    ]
    return Source(classes, items, ignored)


def _unrel(params: Params, root: Path) -> Source:
    folder = _source_folder(params, root)
    files, ignored = _scan(folder, root)
    if not files:
        raise DataError(f"unrel: no image files found in {folder}")
    items = [
        SourceItem(
            id=_item_id(path.relative_to(folder)),
            label=UNLABELLED,
            split="train",
            display=_display(path, root),
            file=path,
        )
        for path in files
    ]
    return Source([], items, ignored)


ADAPTERS: dict[str, Callable[[Params, Path], Source]] = {
    "oxford_pets": _oxford_pets,
    "fgvc_aircraft": _fgvc_aircraft,
    "caltech101": _caltech101,
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "imagefolder": _imagefolder,
    "unrel": _unrel,
}


# ----------------------------------------------------------------------------- writing


def _check_ids(items: list[SourceItem], dataset: str) -> None:
    counts = Counter(item.id for item in items)
    dups = {i for i, n in counts.items() if n > 1}
    if not dups:
        return
    lines = [f"{item.id}: {item.display}" for item in items if item.id in dups]
    raise DataError(
        _list_problems(
            f"{dataset}: {len(dups)} duplicate image id(s) (ids come from file names without extension; "
            "each must be unique):",
            lines,
            "Rename the files so that no two share a name apart from the extension.",
        )
    )


def _prepare(item: SourceItem) -> images.PreparedImage:
    if item.pixels is not None:
        return images.PreparedImage(data=images.array_to_png(item.pixels), ext=".png", copied=False)
    assert item.file is not None
    return images.prepare_file(item.file)


def _write_or_link(dest: Path, data: bytes, previous: Path | None) -> None:
    """Write `data` to `dest`, or hard-link the previous output's file if it holds the same bytes.

    Replacing an output deletes the old tree, and on file systems that discard (TRIM) freed
    blocks at every unlink (ext4 mounted with `discard`, common on cloud VMs) deleting 70k
    small files takes minutes. A file linked into the new tree keeps its blocks, so rebuilding
    with unchanged images then only drops names. Files are never modified in place, so
    sharing an inode with the old tree (about to be deleted) is safe.
    """
    if previous is not None:
        try:
            if previous.stat().st_size == len(data) and previous.read_bytes() == data:
                os.link(previous, dest)
                return
        except OSError:
            pass  # no previous file, or no hard links on this file system: write it
    dest.write_bytes(data)


# One job: the item, its path stem in the new tree, the same stem in the previous output.
_Job = tuple[SourceItem, Path, Path | None]


def _write_chunk(chunk: list[_Job]) -> list[str | SkippedItem]:
    """Write one chunk; per item the written file's suffix, or why it was left out."""
    out: list[str | SkippedItem] = []
    for item, stem, previous in chunk:
        try:
            prepared = _prepare(item)
        except images.BadImageError as exc:
            out.append(SkippedItem(item.display, exc.reason))
            continue
        # Append, not with_suffix: ids may contain dots ("scan.v2").
        old = Path(f"{previous}{prepared.ext}") if previous is not None else None
        _write_or_link(Path(f"{stem}{prepared.ext}"), prepared.data, old)
        out.append(prepared.ext)
    return out


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def build_dataset(params: Params, root: Path = Path(".")) -> BuildResult:
    """Run the `data` stage: write `data/<dataset>/` from `params` (see the module docstring).

    Raises DataError (bad images under `on_bad_image: error`, duplicate ids, empty class
    folders, a bad split file) or DatasetNotFoundError; the previous output is then untouched.
    """
    start = time.perf_counter()
    dataset = params.dataset
    source = ADAPTERS[dataset](params, root)
    _check_ids(source.items, dataset)
    # Manifest order: train rows first, then test, each in source order (sort is stable).
    items = sorted(source.items, key=lambda item: SPLITS.index(item.split))
    caps = {"train": params.data.max_per_class.train, "test": params.data.max_per_class.test}
    items = subset_per_class(items, caps, params.data.seed)

    out = data_dir(dataset, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the old folder (whose images are reused) and swapped in when complete.
    with publish_dir(out) as tmp:
        # Relative image path (without extension) of each item, folders created up front.
        folders = _class_folders(source.classes)
        rel_stems: list[str] = []
        for item in items:
            sub = (
                f"images/{item.split}"
                if item.label == UNLABELLED
                else f"images/{item.split}/{folders[item.label]}"
            )
            rel_stems.append(f"{sub}/{item.id}")
        for sub in sorted({s.rpartition("/")[0] for s in rel_stems}):
            (tmp / sub).mkdir(parents=True, exist_ok=True)

        reuse = out.is_dir()
        jobs: list[_Job] = [
            (item, tmp / stem, out / stem if reuse else None) for item, stem in zip(items, rel_stems)
        ]
        chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
        results: list[str | SkippedItem] = []
        workers = min(8, max(2, os.cpu_count() or 1))  # PIL and zlib release the GIL
        with (
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(jobs), desc=f"data {dataset}", unit="img", disable=None) as bar,
        ):
            for chunk_results in pool.map(_write_chunk, chunks):  # map keeps the order
                results += chunk_results
                bar.update(len(chunk_results))

        bad = [r for r in results if isinstance(r, SkippedItem)]
        if bad and params.data.on_bad_image == "error":
            raise DataError(
                _list_problems(
                    f"{dataset}: {len(bad)} unusable image file(s):",
                    [f"{b.path}: {b.reason}" for b in bad],
                    "Fix or remove them, or set data.on_bad_image: skip to leave them out "
                    f"(they are then listed in {out}/skipped.csv).",
                )
            )

        rows = [
            ManifestRow(
                item.id,
                stem + ext,
                item.label,
                source.classes[item.label] if item.label != UNLABELLED else "",
                item.split,
            )
            for item, stem, ext in zip(items, rel_stems, results)
            if isinstance(ext, str)
        ]
        _write_csv(
            tmp / "manifest.csv",
            MANIFEST_COLUMNS,
            [(r.id, r.path, r.label, r.class_name, r.split) for r in rows],
        )
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in source.classes))
        skipped = source.ignored + bad
        _write_csv(tmp / "skipped.csv", SKIPPED_COLUMNS, [(s.path, s.reason) for s in skipped])

    counts = {split: sum(r.split == split for r in rows) for split in SPLITS}
    present = {r.label for r in rows}
    return BuildResult(
        dataset=dataset,
        out_dir=out,
        counts=counts,
        classes=source.classes,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        empty_classes=[name for label, name in enumerate(source.classes) if label not in present],
    )


# ----------------------------------------------------------------------------- reading


def read_classes(dataset: str, root: Path = Path(".")) -> list[str]:
    path = classes_path(dataset, root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"{path} not found: run the data stage first (python -m stages.data)"
        ) from None
    return text.splitlines()


def read_manifest(dataset: str, root: Path = Path(".")) -> list[ManifestRow]:
    """The rows of `data/<dataset>/manifest.csv`, typed and checked against the contract."""
    path = manifest_path(dataset, root)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"{path} not found: run the data stage first (python -m stages.data)"
        ) from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != MANIFEST_COLUMNS:
        raise DataError(f"{path}: expected columns {','.join(MANIFEST_COLUMNS)}, got {header}")
    rows: list[ManifestRow] = []
    for line_no, rec in enumerate(reader, start=2):
        try:
            id_, rel, label, class_name, split = rec
            if split not in SPLITS:
                raise ValueError(f"split {split!r}")
            rows.append(ManifestRow(id_, rel, int(label), class_name, split))  # type: ignore[arg-type]
        except ValueError as exc:
            raise DataError(f"{path}: line {line_no} is malformed ({exc}): {rec}") from None
    return rows
