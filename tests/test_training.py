"""pipeline.training: the batch order, fingerprints and checkpoints the three training loops
share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.training import (
    CHECKPOINT_NAME,
    BatchOrder,
    fingerprint,
    restore_state,
    save_state,
)


def test_batch_order_is_a_permutation_per_epoch_and_straddles_epochs() -> None:
    order = BatchOrder(n=10, batch_size=4, seed=3)
    stream = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # reshuffled per epoch
    assert torch.equal(stream[:10], order.permutation(0)) and torch.equal(stream[10:], order.permutation(1))
    # Any step can be asked for first: the order depends on (seed, epoch) only.
    assert torch.equal(BatchOrder(10, 4, seed=3).indices(3), stream[12:16])
    assert not torch.equal(BatchOrder(10, 4, seed=4).permutation(0), order.permutation(0))
    small = BatchOrder(n=3, batch_size=8, seed=0)  # fewer samples than a batch: repeats
    assert len(small.indices(0)) == 8


def test_fingerprint_covers_payload_and_data() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = fingerprint({"lr": 1e-3, "v": 1}, x)
    assert a == fingerprint({"v": 1, "lr": 1e-3}, x.copy())  # key order does not matter
    assert a != fingerprint({"lr": 2e-3, "v": 1}, x)
    assert a != fingerprint({"lr": 1e-3, "v": 1}, x.reshape(3, 2))  # same bytes, other shape
    y = x.copy()
    y[1, 2] = 0
    assert a != fingerprint({"lr": 1e-3, "v": 1}, y)


def test_save_and_restore_state(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(tmp_path, "fp", {"model": model, "opt": opt}, {"step": 7, "curve": [1.5]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temporary left

    fresh, fresh_opt = torch.nn.Linear(3, 2), None
    fresh_opt = torch.optim.Adam(fresh.parameters())
    values = restore_state(tmp_path, "fp", {"model": fresh, "opt": fresh_opt}, device="cpu", what="test")
    assert values == {"step": 7, "curve": [1.5]}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_opt.state_dict()["state"][0]["step"] == 1

    # Another run's checkpoint, a missing object and a torn file are ignored with the reason.
    assert restore_state(tmp_path, "other", {"model": fresh}, device="cpu", what="test") is None
    assert "made with other params" in capsys.readouterr().out
    assert restore_state(tmp_path, "fp", {"nope": fresh}, device="cpu", what="test") is None
    assert "ignoring test checkpoint" in capsys.readouterr().out
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"torn")
    assert restore_state(tmp_path, "fp", {"model": fresh}, device="cpu", what="test") is None
    assert "unreadable" in capsys.readouterr().out
    assert restore_state(None, "fp", {}, device="cpu", what="test") is None
