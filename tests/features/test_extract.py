"""encode + extract on a tiny embedded-architecture model: shapes, resume after SIGKILL,
several processes, and bit-identical results across all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.backbones.weights import lock_record, resolve_weights, write_lock
from pipeline.config import Params, parse_params
from pipeline.data.datasets import build_dataset
from pipeline.embedded.train import build_scheduler, build_unet
from pipeline.errors import StoreError
from pipeline.features.backbone import load_for_params
from pipeline.features.encode import latents_provenance, run_encode
from pipeline.features.extract import run_extract
from pipeline.features.staging import STAGING, forward_batch
from pipeline.features.store import open_store
from pipeline.paths import Key, backbone_dir, latents_store

REPO = Path(__file__).resolve().parents[2]


def _params(default_params_raw: dict, **extract) -> Params:
    raw = default_params_raw
    raw.update(dataset="digits", layer="up_ft0", t=100)
    raw["data"].update(max_per_class={"train": 8, "test": 2}, image_size=16)
    raw["model_train"].update(channels=[8, 16], norm_groups=4, image_size=16)
    # Batched forwards (the default): the tests below hold the store to one result whatever
    # the number of processes or an interruption.
    raw["extract"].update({"dtype": "fp32", "device": "cpu", "batch_size": 4, "shard_size": 8,
                           "batch_invariant": False, **extract})
    return parse_params(raw)


def _setup(root: Path, params: Params) -> None:
    """Data + a seeded random model of the embedded architecture, locked like the model stage."""
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    build_dataset(params, root)
    out = backbone_dir(params.model, root)
    build_unet(params.model_train, seed=1).save_pretrained(out / "unet")
    build_scheduler(params.model_train).save_pretrained(out / "scheduler")
    weights = resolve_weights(params.backbone, None, root=root)
    write_lock(lock_record(params.model, weights, root=root), out)


# Batched CPU forwards depend on the thread count in the last bits (oneDNN splits work per
# thread; one-sample forwards happened not to): the runs compared here, in this process and in
# `OMP_NUM_THREADS=1` subprocesses as torchrun's ranks get by default, use one each.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def params(default_params_raw: dict) -> Params:
    return _params(default_params_raw)


def _run_all(root: Path, params: Params):
    backbone = load_for_params(params, root)
    run_encode(params, backbone, root)
    return run_extract(params, backbone, root)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = open_store(path)
    return {f"{s}/{k}": store.read(s, k) for s in store.splits() for k in store.layout["arrays"]}


def test_encode_extract_shapes_and_provenance(tmp_path: Path, params: Params) -> None:
    _setup(tmp_path, params)
    feats = _run_all(tmp_path, params)
    latents = open_store(latents_store("digits", "fmnist-ddpm", tmp_path))
    assert latents.array("train", "latents").shape == (80, 1, 16, 16)
    x = latents.read("train", "latents")
    assert x.min() >= -1 and x.max() <= 1
    # up_blocks[0] of a 2-level UNet: 16 channels, upsampled from the 8×8 bottleneck (as SD's up_ft0)
    assert feats.array("train", "fmap").shape == (80, 16, 16, 16)
    assert feats.array("test", "pooled").shape == (20, 16)
    np.testing.assert_allclose(
        feats.read("train", "pooled"), feats.read("train", "fmap").astype(np.float32).mean(axis=(2, 3)), atol=2e-3
    )
    prov = feats.provenance
    assert (prov["layer"], prov["t"], prov["prompt"], prov["dataset"]) == ("up_ft0", 100, "empty", "digits")
    assert len(prov["weights_sha256"]) == 64
    # the staging area is emptied by publishing
    assert not any((tmp_path / STAGING).glob("*.zarr"))


def test_views_stored_for_train_only(tmp_path: Path, default_params_raw: dict) -> None:
    params = _params(default_params_raw, views=3)
    _setup(tmp_path, params)
    backbone = load_for_params(params, tmp_path)
    latents = run_encode(params, backbone, tmp_path)
    view = latents.read("train", "view")
    assert view.tolist()[:6] == [0, 1, 2, 0, 1, 2] and latents.num_samples("test") == 20
    x = latents.read("train", "latents")
    assert not np.array_equal(x[0], x[1])  # an augmented view differs from the plain one


def test_fmap_false_stores_pooled_only(tmp_path: Path, default_params_raw: dict) -> None:
    params = _params(default_params_raw, fmap=False)
    _setup(tmp_path, params)
    feats = _run_all(tmp_path, params)
    assert not feats.has_array("train", "fmap") and feats.has_array("train", "pooled")


def test_store_for_other_params_is_refused(tmp_path: Path, params: Params) -> None:
    _setup(tmp_path, params)
    _run_all(tmp_path, params)
    raw = params.model_dump(mode="json")
    raw["extract"]["seed"] = 7
    other = parse_params(raw)
    with pytest.raises(StoreError, match="seed: store has 0, params ask for 7"):
        run_extract(other, load_for_params(other, tmp_path), tmp_path)


def test_forward_batch_is_part_of_the_provenance(tmp_path: Path, params: Params) -> None:
    # Kernels pick algorithms by batch size, so a store batched by 4 need not equal one batched
    # by 2: another batch size is another store, and one sample per forward is forward_batch 1.
    _setup(tmp_path, params)
    store = _run_all(tmp_path, params)
    assert store.provenance["forward_batch"] == 4
    raw = params.model_dump(mode="json")
    raw["extract"]["batch_size"] = 2
    other = parse_params(raw)
    with pytest.raises(StoreError, match="forward_batch: store has 4, params ask for 2"):
        run_extract(other, load_for_params(other, tmp_path), tmp_path)
    raw["extract"]["batch_invariant"] = True
    assert forward_batch(parse_params(raw).extract) == 1


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_killed_extract_resumes_to_identical_store(tmp_path: Path, default_params_raw: dict) -> None:
    # Many small shards and an ensemble so the run is still going when it is killed.
    params = _params(default_params_raw, shard_size=2, ensemble=4)
    ref_root, root = tmp_path / "ref", tmp_path / "run"
    for r in (ref_root, root):
        r.mkdir()
        _setup(r, params)
    reference = _arrays(_run_all(ref_root, params).path)

    backbone = load_for_params(params, root)
    run_encode(params, backbone, root)
    proc = subprocess.Popen([sys.executable, "-m", "stages.extract"], cwd=root, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = root / STAGING
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(done_dir.glob("*/_done/train/*"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    final = Key("digits", "fmnist-ddpm", "up_ft0", 100).features_store(root)
    assert not final.exists()
    (staged,) = done_dir.glob("t100-*.zarr")
    kept = len(list((staged / "_done" / "train").iterdir()))
    assert 3 <= kept < 40

    resumed = run_extract(params, backbone, root)
    got = _arrays(resumed.path)
    assert got.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)


def test_two_processes_equal_one(tmp_path: Path, params: Params) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for r in (one, two):
        r.mkdir()
        _setup(r, params)
    reference = _arrays(_run_all(one, params).path)
    backbone = load_for_params(params, two)
    run_encode(params, backbone, two)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "stages.extract"],
        cwd=two, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _arrays(Key("digits", "fmnist-ddpm", "up_ft0", 100).features_store(two))
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)


def _fake_free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    import shutil

    from pipeline.features import staging

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_extract_refuses_a_store_that_cannot_fit(
    tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(tmp_path, params)
    backbone = load_for_params(params, tmp_path)
    run_encode(params, backbone, tmp_path)
    _fake_free_space(monkeypatch, 10 * 2**20)
    # 100 samples x (16x16x16 fp16 map 8,192 B + 16 pooled fp32 + label, index, view: 8,274 B)
    # fit in 10 MiB; in 512 KiB they do not, and nothing is staged.
    run_extract(params, backbone, tmp_path)
    other = parse_params({**params.model_dump(mode="json"), "t": 200})
    _fake_free_space(monkeypatch, 2**20 // 2)
    with pytest.raises(StoreError) as err:
        run_extract(other, backbone, tmp_path)
    message = str(err.value)
    assert str(other.key.features_store(tmp_path)) in message, message
    assert "needs 808.0 KiB more (100 samples x 8.1 KiB)" in message and "has 512.0 KiB free" in message, message
    assert "pooled vectors only (extract.fmap: false, no Diff-C) would take 8.0 KiB" in message, message
    assert "dvc gc --workspace" in message, message
    assert not any((tmp_path / STAGING).glob("*t200*"))


def test_disk_check_counts_what_a_resumed_staging_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.features.staging import check_disk_space
    from pipeline.features.store import ArraySpec

    arrays = [ArraySpec("fmap", (4, 8, 8), "float16"), ArraySpec("label", (), "int64")]
    sizes = {"train": 1000, "test": 24}  # 1024 x (512 + 8) bytes = 520 KiB
    staged = tmp_path / "staging" / "x.zarr"
    _fake_free_space(monkeypatch, 400 * 1024)
    with pytest.raises(StoreError, match=r"needs 520.0 KiB more \(1024 samples x 520 B\)"):
        check_disk_space(tmp_path / "x.zarr", staged, sizes, arrays)
    # Half already staged by an interrupted run: the rest fits.
    staged.mkdir(parents=True)
    (staged / "c").write_bytes(b"\0" * 260 * 1024)
    check_disk_space(tmp_path / "x.zarr", staged, sizes, arrays)


def test_image_size_override_is_recorded(tmp_path: Path, default_params_raw: dict) -> None:
    raw = _params(default_params_raw).model_dump(mode="json")
    raw["data"].update(image_size=64, any_image_size=True)  # the model is trained at 16 px
    params = parse_params(raw)
    _setup(tmp_path, params)
    latents = run_encode(params, load_for_params(params, tmp_path), tmp_path)
    assert "data.image_size = 64 is far from model fmnist-ddpm's native 16 px" in latents.provenance[
        "image_size_override"
    ]
    # At a size the model suits, provenance has no such key (existing stores keep their hash).
    assert "image_size_override" not in latents_provenance(_params(default_params_raw), tmp_path, torch.float32)


def test_clip_choices_cache_is_keyed_by_the_prompt_template(tmp_path, default_params_raw, monkeypatch) -> None:
    # CLIP's weights are not here: a fake zero-shot classifier that counts its calls.
    from types import SimpleNamespace

    import pipeline.config
    import pipeline.features.extract as extract

    calls = []
    monkeypatch.setattr(extract, "latents_provenance", lambda params, root, dtype: {"latents": "fixed"})
    monkeypatch.setattr(extract, "read_classes", lambda dataset, root: ["a", "b"])
    monkeypatch.setattr(extract, "load_clip", lambda name, device: object())
    monkeypatch.setattr(extract, "load_view", lambda sample, size, seed: torch.zeros(3, 4, 4))

    def zero_shot(clip, images, classes, template, labels=None):
        calls.append(template)
        return SimpleNamespace(predicted=np.zeros(len(images), np.int64), accuracy=0.5)

    monkeypatch.setattr(extract, "clip_zero_shot", zero_shot)
    params = _params(default_params_raw)
    backbone = SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))
    samples = {"test": [SimpleNamespace(label=0), SimpleNamespace(label=1)]}
    first = extract.clip_choices(params, backbone, samples, tmp_path)
    assert extract.clip_choices(params, backbone, samples, tmp_path) == first and len(calls) == 1  # cached
    monkeypatch.setitem(pipeline.config.CLIP_TEMPLATES, params.dataset, "a blurry photo of a {}.")
    extract.clip_choices(params, backbone, samples, tmp_path)
    assert calls == [calls[0], "a blurry photo of a {}."]  # a new template is not read from the old cache
    assert len(list((tmp_path / STAGING).glob("clip-*.json"))) == 2
