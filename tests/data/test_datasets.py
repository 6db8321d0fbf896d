"""The `data` stage: every adapter on fixtures in its real on-disk layout, read through
torchvision's own classes where the pipeline uses them, plus the output contract, subsets,
bad input, missing datasets, determinism and atomicity."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data import datasets
from pipeline.data.datasets import (
    MANIFEST_COLUMNS,
    DatasetNotFoundError,
    build_dataset,
    read_classes,
    read_manifest,
)
from pipeline.errors import DataError
from stages import data as data_stage
from tests import dataset_fixtures as fx

# ----------------------------------------------------------------------------- helpers


def check_contract(root: Path, dataset: str) -> list[datasets.ManifestRow]:
    """Everything the other stages rely on, for any dataset's output."""
    out = root / "data" / dataset
    with open(out / "manifest.csv", newline="") as f:
        assert next(csv.reader(f)) == list(MANIFEST_COLUMNS)
    rows = read_manifest(dataset, root)
    classes = read_classes(dataset, root)
    assert len({r.id for r in rows}) == len(rows), "ids must be unique"
    for r in rows:
        assert r.split in ("train", "test")
        assert r.id[0].isalpha(), r.id
        if dataset == "unrel":
            assert (r.label, r.class_name) == (-1, "")
            assert r.path == f"images/train/{Path(r.path).name}"
        else:
            assert 0 <= r.label < len(classes) and classes[r.label] == r.class_name
            assert (
                r.path == f"images/{r.split}/{datasets.class_folder_name(r.class_name)}/{Path(r.path).name}"
            )
        assert Path(r.path).stem == r.id
        img = Image.open(r.file(out))
        img.load()
        assert img.mode == "RGB" and img.format in ("JPEG", "PNG"), (r.path, img.mode, img.format)
        if img.format == "PNG":
            assert r.file(out).read_bytes()[24:26] == bytes([8, 2]), "8-bit RGB PNG"
    assert not list((root / "data").glob(f".{dataset}.*")), "temporary folders left behind"
    return rows


def split_counts(rows) -> dict[str, int]:
    return dict(Counter(r.split for r in rows))


def skipped(root: Path, dataset: str) -> dict[str, str]:
    with open(root / "data" / dataset / "skipped.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "reason"]
        return {row["path"]: row["reason"] for row in reader}


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails at once, as on a closed network."""

    def refuse(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ----------------------------------------------------------------------------- torchvision datasets


def test_oxford_pets(tmp_path: Path, no_network):
    expected = fx.make_oxford_pets(tmp_path / "raw")
    result = build_dataset(fx.params_for("oxford_pets"), tmp_path)
    rows = check_contract(tmp_path, "oxford_pets")
    assert (
        read_classes("oxford_pets", tmp_path)
        == expected.classes
        == ["Abyssinian", "American Bulldog", "Bengal"]
    )
    assert split_counts(rows) == expected.counts == result.counts
    assert {s: {r.id for r in rows if r.split == s} for s in ("train", "test")} == expected.ids
    for r in rows:  # label follows annotations' CLASS-ID: the breed is the id's prefix
        assert r.id.rsplit("_", 1)[0].lower() == r.class_name.replace(" ", "_").lower()
        # already 8-bit RGB JPEG: copied byte for byte
        src = tmp_path / "raw/oxford_pets/oxford-iiit-pet/images" / f"{r.id}.jpg"
        assert r.file(result.out_dir).read_bytes() == src.read_bytes()
    assert "images/train/American Bulldog/american_bulldog_1.jpg" in {r.path for r in rows}


def test_fgvc_aircraft(tmp_path: Path, no_network):
    expected = fx.make_fgvc_aircraft(tmp_path / "raw")
    build_dataset(fx.params_for("fgvc_aircraft"), tmp_path)
    rows = check_contract(tmp_path, "fgvc_aircraft")
    assert read_classes("fgvc_aircraft", tmp_path) == expected.classes
    assert split_counts(rows) == expected.counts
    assert {s: {r.id for r in rows if r.split == s} for s in ("train", "test")} == expected.ids
    # Labels follow images_variant_*.txt.
    data = tmp_path / "raw/fgvc_aircraft/fgvc-aircraft-2013b/data"
    truth = dict(
        line.split(" ", 1)
        for name in ("images_variant_trainval.txt", "images_variant_test.txt")
        for line in (data / name).read_text().splitlines()
    )
    assert all(truth[r.id.removeprefix("fgvc_")] == r.class_name for r in rows)
    assert any(r.path.startswith("images/train/F_A-18/") and r.class_name == "F/A-18" for r in rows)


def test_caltech101_drops_background_and_splits_per_class(tmp_path: Path, no_network):
    cats = fx.make_caltech101(tmp_path / "raw")
    (cats / "accordion" / ".DS_Store").write_bytes(b"\0\0junk")  # would break torchvision's counting
    (cats / "accordion" / "notes.txt").write_text("not an image")
    build_dataset(fx.params_for("caltech101"), tmp_path)
    rows = check_contract(tmp_path, "caltech101")
    assert read_classes("caltech101", tmp_path) == ["Faces_easy", "accordion", "airplanes", "anchor"]
    per = Counter((r.class_name, r.split) for r in rows)
    # round(0.2 n) clamped to [1, n-1]; a single image stays in train.
    assert per == {
        ("Faces_easy", "train"): 4,
        ("Faces_easy", "test"): 1,
        ("accordion", "train"): 3,
        ("accordion", "test"): 1,
        ("airplanes", "train"): 1,
        ("airplanes", "test"): 1,
        ("anchor", "train"): 1,
    }
    assert "accordion_image_0004" in {r.id for r in rows}
    skip = skipped(tmp_path, "caltech101")
    assert list(skip) == ["raw/caltech101/caltech101/101_ObjectCategories/accordion/notes.txt"]
    # The split is seeded: other seeds give other test sets.
    tests = set()
    for seed in range(4):
        build_dataset(fx.params_for("caltech101", seed=seed, test_fraction=0.5), tmp_path)
        tests.add(frozenset(r.id for r in read_manifest("caltech101", tmp_path) if r.split == "test"))
    assert len(tests) > 1


def test_fashion_mnist_from_idx_files(tmp_path: Path, no_network):
    arrays = fx.make_fashion_mnist_raw(tmp_path / "raw", n_train=30, n_test=20)
    build_dataset(fx.params_for("fashion_mnist"), tmp_path)
    rows = check_contract(tmp_path, "fashion_mnist")
    assert read_classes("fashion_mnist", tmp_path) == fx.FASHION_CLASSES
    assert split_counts(rows) == {"train": 30, "test": 20}
    assert rows[0].id == "train_00000" and rows[30].id == "test_00000"
    out = tmp_path / "data/fashion_mnist"
    for r in (rows[0], rows[17], rows[30], rows[49]):
        images, labels = arrays["train" if r.split == "train" else "t10k"]
        i = int(r.id.split("_")[1])
        assert r.label == labels[i] and r.path.endswith(".png")
        pixels = np.asarray(Image.open(r.file(out)))
        assert pixels.shape == (28, 28, 3) and all(
            np.array_equal(pixels[:, :, c], images[i]) for c in range(3)
        )
    assert any("T-shirt_top/" in r.path for r in rows)
    # The array API the DDPM trainer uses.
    x, y = datasets.fashion_mnist_arrays("test", tmp_path / "raw", download=False)
    assert x.dtype == np.uint8 and x.shape == (20, 28, 28) and y.dtype == np.int64
    assert np.array_equal(x, arrays["t10k"][0]) and np.array_equal(y, arrays["t10k"][1])


def test_fashion_mnist_copied_from_system_package(tmp_path: Path, monkeypatch, no_network):
    system = tmp_path / "usr_share"
    arrays = fx.write_fashion_files(system, n_train=12, n_test=5, gz=True)
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", system)
    x, y = datasets.fashion_mnist_arrays("train", tmp_path / "raw", download=False)
    assert np.array_equal(x, arrays["train"][0]) and np.array_equal(y, arrays["train"][1])
    raw = tmp_path / "raw/fashion_mnist/FashionMNIST/raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(datasets._FASHION_MNIST_FILES)  # no temp files


@pytest.mark.parametrize("download", [False, True])
def test_fashion_mnist_missing_says_what_to_install(tmp_path: Path, monkeypatch, no_network, download):
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(fx.params_for("fashion_mnist", download=download), tmp_path)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert f"{tmp_path}/raw/fashion_mnist/FashionMNIST/raw/train-images-idx3-ubyte" in msg
    assert ("data.download is false" in msg) != download


@pytest.mark.parametrize(
    "dataset, needle",
    [
        ("oxford_pets", "raw/oxford_pets/oxford-iiit-pet/annotations/trainval.txt"),
        ("fgvc_aircraft", "raw/fgvc_aircraft/fgvc-aircraft-2013b/data/images_variant_trainval.txt"),
        ("caltech101", "raw/caltech101/caltech101/101_ObjectCategories/<category>/image_0001.jpg"),
    ],
)
@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_names_folder_and_layout(tmp_path: Path, no_network, dataset, needle, download):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(fx.params_for(dataset, download=download), tmp_path)
    msg = str(err.value)
    assert f"{tmp_path}/raw/{dataset}/" in msg and needle in msg, msg
    assert ("did not provide them" in msg) == download
    assert not (tmp_path / "data" / dataset).exists()


def test_caltech101_without_background_folder_explains(tmp_path: Path, no_network):
    cats = fx.make_caltech101(tmp_path / "raw")
    for p in (cats / "BACKGROUND_Google").iterdir():
        p.unlink()
    (cats / "BACKGROUND_Google").rmdir()
    with pytest.raises(DatasetNotFoundError, match="BACKGROUND_Google/ is missing"):
        build_dataset(fx.params_for("caltech101"), tmp_path)


# ----------------------------------------------------------------------------- other adapters


def test_digits_split_scaling_and_subset(tmp_path: Path):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    build_dataset(fx.params_for("digits"), tmp_path)
    rows = check_contract(tmp_path, "digits")
    assert read_classes("digits", tmp_path) == [str(d) for d in range(10)]
    n_class = Counter(int(y) for y in bunch.target)
    n_test = Counter(r.label for r in rows if r.split == "test")
    assert n_test == {d: round(0.2 * n) for d, n in n_class.items()}
    r = next(r for r in rows if r.split == "test")
    i = int(r.id.removeprefix("digit_"))
    pixels = np.asarray(Image.open(r.file(tmp_path / "data/digits")))[:, :, 0]
    assert np.array_equal(pixels, np.rint(bunch.images[i] * 255 / 16).astype(np.uint8))
    assert r.label == bunch.target[i]

    build_dataset(fx.params_for("digits", max_per_class={"train": 20, "test": 5}), tmp_path)
    rows = check_contract(tmp_path, "digits")
    assert Counter((r.label, r.split) for r in rows) == {
        (d, s): n for d in range(10) for s, n in (("train", 20), ("test", 5))
    }


def test_imagefolder_stratified_split(tmp_path: Path):
    fx.make_imagefolder(tmp_path / "src", {"cat": 5, "dog": 3, "emu": 1})
    build_dataset(fx.params_for("imagefolder", path="src"), tmp_path)
    rows = check_contract(tmp_path, "imagefolder")
    assert read_classes("imagefolder", tmp_path) == ["cat", "dog", "emu"]
    assert Counter((r.class_name, r.split) for r in rows) == {
        ("cat", "train"): 4,
        ("cat", "test"): 1,
        ("dog", "train"): 2,
        ("dog", "test"): 1,
        ("emu", "train"): 1,
    }
    assert [r.split for r in rows] == sorted((r.split for r in rows), key=("train", "test").index)
    assert "cat__img_000" in {r.id for r in rows}


def test_imagefolder_split_file(tmp_path: Path):
    files = fx.make_imagefolder(tmp_path / "src", {"cat": 3, "dog": 2})
    fx.write_rgb_jpeg(tmp_path / "src/dog/sub/deep.jpg", 9)  # nested files belong to the top folder's class
    lines = [
        "path,split",
        "cat/img_000.jpg,test",
        "cat/img_001.jpg,train",
        "cat/img_002.jpg,train",
        "dog/img_000.jpg,train",
        "./dog/img_001.jpg,test",
        "dog/sub/deep.jpg,train",
    ]
    (tmp_path / "splits.csv").write_text("\n".join(lines) + "\n")
    build_dataset(fx.params_for("imagefolder", path="src", split_file="splits.csv"), tmp_path)
    rows = check_contract(tmp_path, "imagefolder")
    assert {r.id: r.split for r in rows} == {
        "cat__img_000": "test",
        "cat__img_001": "train",
        "cat__img_002": "train",
        "dog__img_000": "train",
        "dog__img_001": "test",
        "dog__sub__deep": "train",
    }
    assert len(files["cat"]) == 3

    # An unlisted image, a bad split value and a listed file that does not exist: each named.
    (tmp_path / "splits.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"1 image\(s\) are not listed:\n  dog/sub/deep.jpg"):
        build_dataset(fx.params_for("imagefolder", path="src", split_file="splits.csv"), tmp_path)
    (tmp_path / "splits.csv").write_text("\n".join(lines + ["dog/ghost.jpg,train"]) + "\n")
    with pytest.raises(DataError, match="not image files under .*\n  dog/ghost.jpg"):
        build_dataset(fx.params_for("imagefolder", path="src", split_file="splits.csv"), tmp_path)
    (tmp_path / "splits.csv").write_text(
        "\n".join(lines).replace("dog/img_000.jpg,train", "dog/img_000.jpg,val") + "\n"
    )
    with pytest.raises(DataError, match="line 5: dog/img_000.jpg: split 'val'"):
        build_dataset(fx.params_for("imagefolder", path="src", split_file="splits.csv"), tmp_path)


def test_unrel_convention(tmp_path: Path):
    src = tmp_path / "photos"
    fx.write_rgb_jpeg(src / "b.jpg", 1)
    fx.write_rgba_png(src / "a.png")
    fx.write_rgb_jpeg(src / "trip/c.jpg", 2)
    (src / "README.txt").write_text("holiday photos")
    (src / ".DS_Store").write_bytes(b"\0")
    build_dataset(fx.params_for("unrel", path=str(src)), tmp_path)  # absolute data.path
    rows = check_contract(tmp_path, "unrel")
    assert [r.id for r in rows] == ["a", "b", "trip__c"]
    assert {r.split for r in rows} == {"train"}
    assert read_classes("unrel", tmp_path) == []
    assert (tmp_path / "data/unrel/classes.txt").read_bytes() == b""
    assert [r.path for r in rows] == ["images/train/a.png", "images/train/b.jpg", "images/train/trip__c.jpg"]
    assert list(skipped(tmp_path, "unrel")) == ["photos/README.txt"]  # relative to the repo root
    build_dataset(fx.params_for("unrel", path=str(src), max_per_class={"train": 2, "test": None}), tmp_path)
    assert len(read_manifest("unrel", tmp_path)) == 2


# ----------------------------------------------------------------------------- subsets, determinism


def test_max_per_class_is_stratified_and_seeded(tmp_path: Path):
    fx.make_imagefolder(tmp_path / "src", {"a": 12, "b": 6, "c": 2})
    caps = {"train": 2, "test": 1}

    def chosen(seed: int) -> list[str]:
        build_dataset(
            fx.params_for("imagefolder", path="src", test_fraction=0.5, max_per_class=caps, seed=seed),
            tmp_path,
        )
        rows = check_contract(tmp_path, "imagefolder")
        assert Counter((r.class_name, r.split) for r in rows) == {
            ("a", "train"): 2,
            ("a", "test"): 1,
            ("b", "train"): 2,
            ("b", "test"): 1,
            ("c", "train"): 1,
            ("c", "test"): 1,
        }
        return [r.id for r in rows]

    first = chosen(0)
    assert chosen(0) == first
    assert any(chosen(seed) != first for seed in (1, 2, 3))


def test_two_builds_are_byte_identical(tmp_path: Path):
    src = tmp_path / "src"
    fx.make_imagefolder(src, {"x": 4, "y": 3})
    fx.write_cmyk_jpeg(src / "x/cmyk.jpg")
    fx.write_gray16_png(src / "y/g16.png")
    params = fx.params_for("imagefolder", path="src", max_per_class={"train": 3, "test": None})
    build_dataset(params, tmp_path)
    manifest, digest = (
        (tmp_path / "data/imagefolder/manifest.csv").read_bytes(),
        tree_digest(tmp_path / "data/imagefolder"),
    )
    build_dataset(params, tmp_path)
    assert (tmp_path / "data/imagefolder/manifest.csv").read_bytes() == manifest
    assert tree_digest(tmp_path / "data/imagefolder") == digest
    # From scratch (nothing to reuse from a previous output) too.
    shutil.rmtree(tmp_path / "data")
    build_dataset(params, tmp_path)
    assert tree_digest(tmp_path / "data/imagefolder") == digest


def test_rebuild_reuses_unchanged_files_and_rewrites_changed_ones(tmp_path: Path):
    files = fx.make_imagefolder(tmp_path / "src", {"x": 3, "y": 2})
    fx.write_rgb_jpeg(tmp_path / "src/x/scan.v2.jpg", 8)  # a dot inside the id
    params = fx.params_for("imagefolder", path="src", test_fraction=0.5)
    build_dataset(params, tmp_path)
    out = tmp_path / "data/imagefolder"
    rows = {r.id: r for r in check_contract(tmp_path, "imagefolder")}
    assert rows["x__scan.v2"].path.endswith("/x__scan.v2.jpg")
    inodes = {i: r.file(out).stat().st_ino for i, r in rows.items()}
    fx.write_rgb_jpeg(files["x"][0], 99)  # change one source image in place
    build_dataset(params, tmp_path)
    rows = {r.id: r for r in check_contract(tmp_path, "imagefolder")}
    assert rows["x__img_000"].file(out).read_bytes() == files["x"][0].read_bytes()
    assert rows["x__img_000"].file(out).stat().st_ino != inodes["x__img_000"]
    assert all(rows[i].file(out).stat().st_ino == inodes[i] for i in rows if i != "x__img_000")
    assert all(rows[i].file(out).stat().st_nlink == 1 for i in rows)  # the old tree is gone


# ----------------------------------------------------------------------------- bad input


def _bad_folder(src: Path) -> dict[str, Path]:
    fx.make_imagefolder(src, {"cat": 3, "dog": 2})
    bad = {
        "truncated": fx.write_truncated_jpeg(src / "cat/truncated.jpg"),
        "zero": fx.write_zero_byte(src / "cat/zero.png"),
        "garbage": fx.write_garbage(src / "dog/garbage.jpg"),
        "cut": fx.write_truncated_png(src / "dog/cut.png"),
    }
    (src / "cat/notes.txt").write_text("not an image")
    (src / "cat/.DS_Store").write_bytes(b"\0\1")
    (src / "stray.jpg").write_bytes(b"")  # not in a class folder
    for name, writer in (
        ("cmyk.jpg", fx.write_cmyk_jpeg),
        ("rgba.png", fx.write_rgba_png),
        ("pal.png", fx.write_palette_png),
        ("g16.png", fx.write_gray16_png),
        ("la.png", fx.write_la_png),
        ("gray.jpg", fx.write_gray_jpeg),
        ("rgb16.png", fx.write_rgb16_png),
    ):
        writer(src / "dog" / name)
    return bad


def test_bad_images_error_mode_names_every_file(tmp_path: Path):
    _bad_folder(tmp_path / "src")
    with pytest.raises(DataError) as err:
        build_dataset(fx.params_for("imagefolder", path="src", on_bad_image="error"), tmp_path)
    msg = str(err.value)
    assert msg.startswith("imagefolder: 4 unusable image file(s):")
    assert "src/cat/truncated.jpg: truncated or corrupt" in msg
    assert "src/cat/zero.png: empty file (0 bytes)" in msg
    assert "src/dog/garbage.jpg: not a recognised image format" in msg
    assert "src/dog/cut.png: truncated or corrupt" in msg
    assert "on_bad_image: skip" in msg and "notes.txt" not in msg
    assert not (tmp_path / "data/imagefolder").exists()
    assert not list((tmp_path / "data").glob(".imagefolder*"))


def test_bad_images_skip_mode_records_and_converts(tmp_path: Path):
    src = tmp_path / "src"
    _bad_folder(src)
    result = build_dataset(fx.params_for("imagefolder", path="src", on_bad_image="skip"), tmp_path)
    rows = check_contract(tmp_path, "imagefolder")
    ids = {r.id for r in rows}
    assert not ids & {"cat__truncated", "cat__zero", "dog__garbage", "dog__cut"}
    assert len(rows) == 3 + 2 + 7 == result.total
    skip = skipped(tmp_path, "imagefolder")
    assert skip["src/cat/truncated.jpg"].startswith("truncated or corrupt")
    assert skip["src/cat/zero.png"] == "empty file (0 bytes)"
    assert skip["src/dog/garbage.jpg"] == "not a recognised image format"
    assert skip["src/dog/cut.png"].startswith("truncated or corrupt")
    assert skip["src/cat/notes.txt"].startswith("not an image file (extension .txt")
    assert skip["src/stray.jpg"] == "not inside a class folder (ignored)"
    assert not any(".DS_Store" in p for p in skip)
    by_id = {r.id: r for r in rows}
    for name in ("cmyk", "rgba", "pal", "g16", "la", "gray", "rgb16"):
        assert by_id[f"dog__{name}"].path.endswith(f"/dog__{name}.png"), name
    out = tmp_path / "data/imagefolder"
    assert np.asarray(Image.open(by_id["dog__rgba"].file(out)))[3, 0].tolist() == [255, 255, 255]
    assert np.asarray(Image.open(by_id["dog__g16"].file(out)))[3, 7].tolist() == [128, 128, 128]
    assert by_id["cat__img_000"].file(out).read_bytes() == (src / "cat/img_000.jpg").read_bytes()


def test_error_lists_first_ten_and_counts_the_rest(tmp_path: Path):
    fx.make_imagefolder(tmp_path / "src", {"a": 1})
    for i in range(13):
        fx.write_zero_byte(tmp_path / f"src/a/z{i:02d}.png")
    with pytest.raises(DataError) as err:
        build_dataset(fx.params_for("imagefolder", path="src"), tmp_path)
    msg = str(err.value)
    assert msg.count(": empty file (0 bytes)") == 10 and "... and 3 more" in msg
    assert "13 unusable image file(s)" in msg


def test_empty_class_folder(tmp_path: Path):
    fx.make_imagefolder(tmp_path / "src", {"cat": 2, "dog": 2})
    (tmp_path / "src/empty").mkdir()
    (tmp_path / "src/textonly").mkdir()
    (tmp_path / "src/textonly/readme.md").write_text("x")
    with pytest.raises(
        DataError,
        match=r"2 class folder\(s\) .* contain no image files:\n  .*/src/empty/\n  .*/src/textonly/",
    ):
        build_dataset(fx.params_for("imagefolder", path="src"), tmp_path)
    build_dataset(fx.params_for("imagefolder", path="src", on_bad_image="skip"), tmp_path)
    check_contract(tmp_path, "imagefolder")
    assert read_classes("imagefolder", tmp_path) == ["cat", "dog"]
    assert skipped(tmp_path, "imagefolder")["src/empty"] == "empty class folder (class left out)"


def test_duplicate_ids_are_named(tmp_path: Path):
    fx.make_imagefolder(tmp_path / "src", {"cat": 2})
    fx.write_rgb_png(tmp_path / "src/cat/img_001.png", 7)  # same stem as img_001.jpg
    with pytest.raises(DataError, match=r"1 duplicate image id\(s\)") as err:
        build_dataset(fx.params_for("imagefolder", path="src", on_bad_image="skip"), tmp_path)
    assert "cat__img_001: src/cat/img_001.jpg" in str(err.value)
    assert "cat__img_001: src/cat/img_001.png" in str(err.value)


def test_missing_source_folder(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"data.path = 'nowhere': folder .*nowhere not found"):
        build_dataset(fx.params_for("imagefolder", path="nowhere"), tmp_path)


# ----------------------------------------------------------------------------- atomicity


def test_failure_mid_build_keeps_previous_output(tmp_path: Path, monkeypatch):
    fx.make_imagefolder(tmp_path / "src", {"a": 40, "b": 40})
    build_dataset(fx.params_for("imagefolder", path="src"), tmp_path)
    out = tmp_path / "data/imagefolder"
    before = tree_digest(out)
    # A stale temporary folder from a killed run (pid beyond pid_max) is cleaned up.
    stale = tmp_path / "data/.imagefolder.tmp-4194400"
    stale.mkdir()

    real_prepare, calls, lock = datasets._prepare, [0], threading.Lock()

    def failing_prepare(item):
        with lock:
            calls[0] += 1
            if calls[0] == 50:
                raise OSError("disk full (simulated)")
        return real_prepare(item)

    monkeypatch.setattr(datasets, "_prepare", failing_prepare)
    with pytest.raises(OSError, match="simulated"):
        build_dataset(fx.params_for("imagefolder", path="src", seed=1), tmp_path)
    assert calls[0] >= 50
    assert tree_digest(out) == before
    assert not stale.exists()
    check_contract(tmp_path, "imagefolder")  # every manifest row still points at its image

    # A data error in the new build also leaves the old output alone.
    monkeypatch.setattr(datasets, "_prepare", real_prepare)
    fx.write_zero_byte(tmp_path / "src/a/zz.jpg")
    with pytest.raises(DataError):
        build_dataset(fx.params_for("imagefolder", path="src", seed=1), tmp_path)
    assert tree_digest(out) == before


# ----------------------------------------------------------------------------- reading, stage entry


def test_read_manifest_errors(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="run the data stage"):
        read_manifest("digits", tmp_path)
    (tmp_path / "data/digits").mkdir(parents=True)
    (tmp_path / "data/digits/manifest.csv").write_text("id,path,label\n")
    with pytest.raises(DataError, match="expected columns id,path,label,class_name,split"):
        read_manifest("digits", tmp_path)
    (tmp_path / "data/digits/manifest.csv").write_text("id,path,label,class_name,split\na,p,x,c,train\n")
    with pytest.raises(DataError, match="line 2 is malformed"):
        read_manifest("digits", tmp_path)


def _write_params(dest: Path, dataset: str, **data) -> Path:
    raw = yaml.safe_load((fx.REPO_ROOT / "params.yaml").read_text())
    raw["dataset"] = dataset
    raw["data"].update(data)
    dest.write_text(yaml.safe_dump(raw))
    return dest


def test_stage_entry_summary_and_error(tmp_path: Path, monkeypatch, capsys):
    fx.make_imagefolder(tmp_path / "src", {"cat": 3, "dog": 3})
    monkeypatch.chdir(tmp_path)
    _write_params(
        tmp_path / "params.yaml", "imagefolder", path="src", max_per_class={"train": None, "test": None}
    )
    assert data_stage.main([]) == 0
    out = capsys.readouterr().out
    assert "data: imagefolder → data/imagefolder: train 4, test 2 images, 2 classes, 0 skipped" in out

    # A bad image: exit status 1, one message on stderr, no traceback (in a real process).
    fx.write_truncated_jpeg(tmp_path / "src/cat/broken.jpg")
    env = {**os.environ, "PYTHONPATH": str(fx.REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.data", "--params", "params.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(
        "error: imagefolder: 1 unusable image file(s):\n  src/cat/broken.jpg: truncated"
    )
    assert "Traceback" not in proc.stderr
    # A parameter problem is the config module's exit 2.
    _write_params(tmp_path / "bad.yaml", "imagefolder", path="src", on_bad_image="ignore")
    with pytest.raises(SystemExit) as exit_:
        data_stage.main(["--params", "bad.yaml"])
    assert exit_.value.code == 2
