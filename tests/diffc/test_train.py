"""Diff-C training: learns a separable tiny store, resumes bit-identically after a kill."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DiffcParams
from pipeline.diffc.train import (
    CHECKPOINT_NAME,
    BestEpoch,
    best_epoch,
    predict_topk,
    steps_per_epoch,
    train_diffc,
    training_fingerprint,
)
from pipeline.errors import NonFiniteLoss
from pipeline.features.loaders import FmapLoader, carve_validation
from pipeline.features.store import ArraySpec, FeatureStore, create_store

CLASSES, C, H, W = 4, 8, 4, 4
PROV = {"dataset": "digits", "model": "tiny-sd", "layer": "up_ft1", "t": 25, "seed": 0}


def _separable_store(
    path: Path, sizes: dict[str, int], shard_size: int = 32, channels: int = C, side: int = H
) -> FeatureStore:
    """A store shaped like `pipeline.features.extract`'s where each class has its own channel-mean pattern.

    Class k's maps are pattern[k] (one value per channel, broadcast over H×W) plus unit noise,
    with patterns 1.5 apart on average per channel: separable, but not from one pixel alone.
    """
    arrays = [
        ArraySpec("pooled", (channels,), "float32", compress=True),
        ArraySpec("fmap", (channels, side, side), "float16"),
        ArraySpec("label", (), "int64", compress=True),
        ArraySpec("index", (), "int64", compress=True),
        ArraySpec("view", (), "int16", compress=True),
    ]
    store = create_store(path, PROV, sizes, arrays, shard_size)
    patterns = np.random.default_rng(0).normal(0.0, 1.0, (CLASSES, channels))
    for s, split in enumerate(store.splits()):
        for shard, (start, stop) in enumerate(store.shards(split)):
            rng = np.random.default_rng([s, shard])
            label = np.arange(start, stop) % CLASSES
            fmap = (patterns[label][:, :, None, None] + rng.normal(0.0, 1.0, (stop - start, channels, side, side))).astype(
                np.float16
            )
            store.write_shard(
                split,
                shard,
                {
                    "pooled": fmap.astype(np.float32).mean(axis=(2, 3)),
                    "fmap": fmap,
                    "label": label.astype(np.int64),
                    "index": np.arange(start, stop, dtype=np.int64),
                    "view": np.zeros(stop - start, np.int16),
                },
            )
    store.mark_complete()
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    # 161 train samples: with batch 16 the last batch has one sample (skipped by the loop).
    return _separable_store(tmp_path_factory.mktemp("diffc") / "t25.zarr", {"train": 161, "test": 64})


def _hp(**kw) -> DiffcParams:
    base = {"width": 32, "dropout": 0.1, "lr": 3e-3, "lr_min": 3e-4, "weight_decay": 0.01, "batch_size": 16}
    return DiffcParams(**{**base, "epochs": 4, **kw})


def _loaders(
    store: FeatureStore, hp: DiffcParams, in_memory: bool = True, seed: int = 0
) -> tuple[FmapLoader, FmapLoader]:
    train = FmapLoader(store, "train", hp.batch_size, seed=seed, in_memory=in_memory)
    test = FmapLoader(store, "test", 64, shuffle=False, in_memory=in_memory)
    return train, test


def _fit(store: FeatureStore, hp: DiffcParams, ckpt: Path, fingerprint: str = "fp", seed: int = 0, **kw):
    train, test = _loaders(store, hp, kw.pop("in_memory", True), seed)
    return train_diffc(
        train,
        test,
        CLASSES,
        hp,
        seed=seed,
        device="cpu",
        amp_dtype=kw.pop("amp_dtype", None),
        ckpt_dir=ckpt,
        fingerprint=fingerprint,
        progress=False,
        **kw,
    )


def test_learns_separable_classes(store: FeatureStore, tmp_path: Path) -> None:
    hp = _hp()
    torch.manual_seed(99)
    rng_before = torch.random.get_rng_state()
    fit = _fit(store, hp, tmp_path / "ckpt", in_memory=False)  # the streaming (shard) path
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert [r["epoch"] for r in fit.curve] == [1, 2, 3, 4]
    assert set(fit.curve[0]) == {"epoch", "train_loss", "test_loss", "test_top1", "test_top5", "lr"}
    assert fit.test_top1 >= 0.9, fit.curve
    assert fit.test_top5 == 1.0  # 4 classes: the top 5 always hold the right one
    assert fit.curve[-1]["train_loss"] < fit.curve[0]["train_loss"]
    assert fit.train_seconds > 0 and fit.samples_per_s > 0 and fit.resumed_from == 0
    assert fit.cfg.in_channels == C and fit.cfg.width == 32 and not fit.model.training
    # Cosine per step: lr falls every epoch and the last step runs at (about) lr_min.
    lrs = [r["lr"] for r in fit.curve]
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(hp.lr_min, rel=0.01)
    assert (tmp_path / "ckpt" / CHECKPOINT_NAME).exists()

    # Inference agrees with the evaluated accuracy.
    fmap = torch.from_numpy(store.read("test", "fmap"))
    labels = torch.from_numpy(store.read("test", "label"))
    probs, idx = predict_topk(fit.model, fmap, k=5)
    assert probs.shape == idx.shape == (len(labels), CLASSES)  # k capped at 4 classes
    assert torch.all(probs[:, :-1] >= probs[:, 1:])
    assert (idx[:, 0] == labels).float().mean().item() == pytest.approx(fit.test_top1)
    p1, i1 = predict_topk(fit.model, fmap[0], k=2)
    assert p1.shape == i1.shape == (1, 2) and torch.equal(i1, idx[:1, :2])


def test_steps_per_epoch_skips_single_sample_batch(store: FeatureStore) -> None:
    train, _ = _loaders(store, _hp())
    assert len(train) == 11 and steps_per_epoch(train) == 10  # 161 = 10 × 16 + 1


class _Kill(Exception):
    pass


def test_resume_after_kill_is_bit_identical(store: FeatureStore, tmp_path: Path, capsys) -> None:
    hp = _hp(epochs=3)
    full = _fit(store, hp, tmp_path / "full")

    def kill_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise _Kill

    with pytest.raises(_Kill):
        _fit(store, hp, tmp_path / "killed", log=kill_after_first)
    resumed = _fit(store, hp, tmp_path / "killed")  # fresh loaders and model, as a new process
    assert "resuming Diff-C training after epoch 1/3" in capsys.readouterr().out
    assert resumed.resumed_from == 1
    assert resumed.curve == full.curve  # the epoch-1 row comes from the checkpoint
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # A finished checkpoint is not trained again; one with another fingerprint is ignored.
    again = _fit(store, hp, tmp_path / "killed")
    assert again.resumed_from == 3 and again.curve == full.curve
    other = _fit(store, _hp(epochs=1), tmp_path / "killed", fingerprint="other")
    assert "ignoring Diff-C checkpoint" in capsys.readouterr().out
    assert other.resumed_from == 0 and len(other.curve) == 1


def test_unreadable_checkpoint_is_ignored(store: FeatureStore, tmp_path: Path, capsys) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    fit = _fit(store, _hp(epochs=1), tmp_path / "ckpt")
    assert "ignoring unreadable Diff-C checkpoint" in capsys.readouterr().out
    assert fit.resumed_from == 0 and len(fit.curve) == 1
    # Same fingerprint (a caller's mistake) but weights of another shape: ignored, trains anew.
    narrow = _fit(store, _hp(epochs=1, width=16), tmp_path / "ckpt")
    assert "ignoring Diff-C checkpoint" in capsys.readouterr().out
    assert narrow.resumed_from == 0 and narrow.model.fc.in_features == 16


def test_flip_and_seed_change_the_run(store: FeatureStore, tmp_path: Path) -> None:
    base = _fit(store, _hp(epochs=1), tmp_path / "a")
    no_flip = _fit(store, _hp(epochs=1, flip=False), tmp_path / "b")
    other_seed = _fit(store, _hp(epochs=1), tmp_path / "c", seed=1)
    w = base.model.fc.weight
    assert not torch.equal(w, no_flip.model.fc.weight)
    assert not torch.equal(w, other_seed.model.fc.weight)


def test_bf16_autocast_trains(store: FeatureStore, tmp_path: Path) -> None:
    fit = _fit(store, _hp(epochs=2), tmp_path / "ckpt", amp_dtype=torch.bfloat16)
    assert all(np.isfinite(r["train_loss"]) for r in fit.curve)
    assert fit.model.fc.weight.dtype == torch.float32  # weights stay fp32 under autocast
    assert fit.test_top1 >= 0.5


@pytest.mark.parametrize("side", [1, 2, 4])
def test_embedded_width_trains_in_bf16_on_small_maps(side: int, tmp_path: Path) -> None:
    """The embedded default's Diff-C (width 256, lr 1e-4, batch 16) on 128-channel maps of
    1×1, 2×2 and 4×4 (the embedded bottleneck is 4×4, so its last stride-2 conv sees 1×1), in
    bf16, the precision `auto` picks on CPUs with bf16 units: every epoch's loss is finite, the
    classes are learnt (≥ 75% test top-1, 3× chance; 1×1 maps learn slowest, 87.5% after 3
    epochs), and as well as in fp32 (within 2 of the 64 test maps). Before the centre-tap
    path the loss went NaN here within the first epochs."""
    store = _separable_store(tmp_path / "t25.zarr", {"train": 321, "test": 64}, channels=128, side=side)
    hp = _hp(width=256, dropout=0.5, lr=1e-4, lr_min=5e-5, epochs=3)
    fit = _fit(store, hp, tmp_path / "ckpt", amp_dtype=torch.bfloat16)
    losses = [r["train_loss"] for r in fit.curve]
    assert all(np.isfinite(losses)), losses
    assert all(torch.isfinite(p).all() for p in fit.model.parameters())
    fp32 = _fit(store, hp, tmp_path / "ckpt32", amp_dtype=None)
    assert fit.test_top1 >= 0.75 and abs(fit.test_top1 - fp32.test_top1) <= 2 / 64, (fit.test_top1, fp32.test_top1)


def test_training_fingerprint() -> None:
    a = training_fingerprint(_hp(), store="abc", num_classes=4)
    assert a == training_fingerprint(_hp(), num_classes=4, store="abc")
    assert a != training_fingerprint(_hp(epochs=5), store="abc", num_classes=4)
    assert a != training_fingerprint(_hp(), store="abd", num_classes=4)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    store: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.diffc.train as diffc_train

    real, calls = diffc_train.train_step, []

    def diverging(*args, **kwargs):  # epoch 2's third step returns NaN
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == steps_per_epoch(_loaders(store, _hp())[0]) + 3 else loss

    monkeypatch.setattr(diffc_train, "train_step", diverging)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(NonFiniteLoss) as err:
        _fit(store, _hp(epochs=3), ckpt)
    message = str(err.value)
    assert "\n" not in message and message.startswith("Diff-C train loss is nan at epoch 2, step 10/")
    assert f"last good checkpoint {ckpt / CHECKPOINT_NAME} is kept" in message and "diffc.lr" in message
    assert torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1


def test_best_epoch_is_the_highest_validation_top1_earliest_on_a_tie() -> None:
    curve = [
        {"epoch": e, "val_top1": v, "test_top1": t, "test_top5": 1.0}
        for e, v, t in [(1, 0.5, 0.4), (2, 0.8, 0.6), (3, 0.8, 0.9), (4, 0.7, 0.95)]
    ]
    assert best_epoch(curve) == BestEpoch(epoch=2, val_top1=0.8, test_top1=0.6, test_top5=1.0)
    assert best_epoch([{k: v for k, v in row.items() if k != "val_top1"} for row in curve]) is None


def test_validation_split_scores_every_epoch_and_picks_the_best(store: FeatureStore, tmp_path: Path) -> None:
    hp = _hp(epochs=3)
    fit_rows, val_rows = carve_validation(store.read("train", "label"), 0.2, seed=0)
    train = FmapLoader(store, "train", hp.batch_size, seed=0, rows=fit_rows)
    val = FmapLoader(store, "train", 64, shuffle=False, rows=val_rows)
    test = FmapLoader(store, "test", 64, shuffle=False)
    fit = train_diffc(train, test, CLASSES, hp, seed=0, device="cpu", amp_dtype=None, ckpt_dir=tmp_path / "ckpt",
                      fingerprint="fp", progress=False, val=val)
    assert list(fit.curve[0]) == ["epoch", "train_loss", "val_loss", "val_top1", "test_loss", "test_top1",
                                  "test_top5", "lr"]
    assert fit.best == best_epoch(fit.curve) and fit.best is not None
    assert fit.curve[fit.best.epoch - 1]["val_top1"] == max(r["val_top1"] for r in fit.curve)
    assert fit.test_top1 == fit.curve[-1]["test_top1"]  # the headline stays the last epoch's
    # The validation rows are train's, scored in eval mode: what split_accuracy gives on them.
    assert 0.0 <= fit.best.val_top1 <= 1.0 and len(val_rows) == 32
