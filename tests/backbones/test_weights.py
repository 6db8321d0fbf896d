"""Finding weights (model_path, hub cache layout, offline failure), file choice, locks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.backbones.load import load_backbone
from pipeline.backbones.registry import get_backbone
from pipeline.backbones.weights import (
    FAMILY_COMPONENTS,
    lock_record,
    resolve_weights,
    select_files,
    sha256_file,
)
from pipeline.errors import WeightsNotFound

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay `source` out as huggingface_hub does: models--org--name/{refs/main, snapshots/<rev>/}."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, storage / "snapshots" / REVISION)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(REVISION)
    return storage / "snapshots" / REVISION


def test_select_files_prefers_safetensors_and_skips_variants() -> None:
    listing = [
        "model_index.json",
        "v1-5-pruned.safetensors",  # root single-file checkpoint: never taken for SD
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ]
    folders, files, missing = select_files(listing, FAMILY_COMPONENTS["sd"])
    assert missing == []
    assert folders == {
        "unet": "unet",
        "vae": "vae",
        "text_encoder": "text_encoder",
        "tokenizer": "tokenizer",
        "scheduler": "scheduler",
    }
    assert files == sorted(
        [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "text_encoder/config.json",
            "text_encoder/model.safetensors.index.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
        ]
    )
    # google/ddpm-cifar10-32 keeps UNet and scheduler at the repository root.
    folders, files, missing = select_files(
        ["config.json", "diffusion_pytorch_model.bin", "scheduler_config.json"], FAMILY_COMPONENTS["ddpm"]
    )
    assert missing == [] and folders == {"unet": "", "scheduler": ""}
    _, _, missing = select_files(
        ["unet/config.json", "scheduler/scheduler_config.json"], FAMILY_COMPONENTS["ddpm"]
    )
    assert missing == ["unet weights (unet/*.safetensors or *.bin)"]


def test_offline_without_weights_says_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound) as err:
        resolve_weights(get_backbone("sd15"), cache_dir=tmp_path / "hub")
    message = str(err.value)
    assert "'stable-diffusion-v1-5/stable-diffusion-v1-5'" in message
    assert str(tmp_path / "hub") in message and "HF_HUB_OFFLINE" in message
    assert "model_path" in message and "hf download" in message and '"unet/*"' in message


def test_hub_cache_layout_is_found_offline(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DiT snapshot in the hub cache loads with no network, including the hub's legacy
    `Transformer2DModel` transformer config (as facebook/DiT-XL-2-256 ships it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_backbone("dit-xl-2-256")
    snap = _fake_hub_cache(tmp_path, spec.hub_id, tiny_dirs["tiny-dit"])
    config_path = snap / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        {
            "_class_name": "Transformer2DModel",
            "cross_attention_dim": None,
            "num_vector_embeds": None,
            "only_cross_attention": False,
            "use_linear_projection": False,
        }
    )
    config_path.write_text(json.dumps(config))
    spec = type(spec)(**{**spec.__dict__, "num_blocks": 4})  # the tiny snapshot has 4 blocks
    weights = resolve_weights(spec, cache_dir=tmp_path)
    assert weights.path == snap and weights.revision == REVISION and weights.source == "hub"
    bb = load_backbone(spec, cache_dir=tmp_path)
    assert type(bb.denoiser).__name__ == "DiTTransformer2DModel" and bb.null_class == 1000
    # The same weights as loading the tiny folder directly.
    direct = load_backbone("tiny-dit", model_path=tiny_dirs["tiny-dit"])
    for (n, a), (_, b) in zip(
        bb.denoiser.state_dict().items(), direct.denoiser.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n


def test_incomplete_cached_snapshot_is_reported(
    tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_backbone("sd15")
    snap = _fake_hub_cache(tmp_path, spec.hub_id, tiny_dirs["tiny-sd"])
    (snap / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFound, match=r"lacks vae weights"):
        resolve_weights(spec, cache_dir=tmp_path)


def test_model_path_must_be_a_complete_model(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(WeightsNotFound, match="is not a directory"):
        resolve_weights(get_backbone("sd15"), tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dirs["tiny-sd"], partial)
    shutil.rmtree(partial / "text_encoder")
    with pytest.raises(WeightsNotFound, match=r"missing text_encoder \(text_encoder/config.json\)"):
        resolve_weights(get_backbone("sd15"), partial)


def test_made_models_need_the_model_stage(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match=r"run `python -m stages.model`"):
        resolve_weights(get_backbone("tiny-sd"), root=tmp_path)
    with pytest.raises(WeightsNotFound, match="trained by the model stage"):
        resolve_weights(get_backbone("fmnist-ddpm"), root=tmp_path)


def test_lock_hashes_every_loaded_file(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    weights = resolve_weights(get_backbone("tiny-sd"), tiny_dirs["tiny-sd"])
    record = lock_record("tiny-sd", weights, root=tmp_path)
    assert record["files"]["unet/diffusion_pytorch_model.safetensors"] == sha256_file(
        tiny_dirs["tiny-sd"] / "unet" / "diffusion_pytorch_model.safetensors"
    )
    assert set(record["files"]) == set(weights.files)
    assert record["source"] == "model_path" and record["revision"] is None
    # The digest changes when any weight byte changes.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["tiny-sd"], copy)
    same = lock_record("tiny-sd", resolve_weights(get_backbone("tiny-sd"), copy), root=tmp_path)
    assert same["weights_sha256"] == record["weights_sha256"]
    target = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    changed = lock_record("tiny-sd", resolve_weights(get_backbone("tiny-sd"), copy), root=tmp_path)
    assert changed["weights_sha256"] != record["weights_sha256"]
