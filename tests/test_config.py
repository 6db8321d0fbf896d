from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Params, load_params, parse_params
from pipeline.errors import ConfigError


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_params(raw)
    message = str(exc.value)
    assert "\n" not in message, "errors must be one line"
    return message


def test_committed_params_are_valid(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    assert params.dataset == "fashion_mnist"
    assert params.layer in params.layer_names()


def test_every_group_has_a_typed_model() -> None:
    groups = {"data", "model_train", "extract", "sae", "diffc", "eval", "render"}
    assert groups <= set(Params.model_fields)
    for top in ("dataset", "model", "layer", "t", "prompt"):
        assert top in Params.model_fields


def test_typo_in_group_suggests_closest_key(default_params_raw: dict) -> None:
    default_params_raw["sae"]["expansoin"] = 16
    msg = _error(default_params_raw)
    assert "unknown key 'sae.expansoin'" in msg
    assert "did you mean 'sae.expansion'" in msg


def test_typo_at_top_level(default_params_raw: dict) -> None:
    default_params_raw["datset"] = default_params_raw.pop("dataset")
    msg = _error(default_params_raw)
    assert "'datset'" in msg and "did you mean 'dataset'" in msg


def test_wrong_type_names_key_and_value(default_params_raw: dict) -> None:
    default_params_raw["sae"]["k"] = "many"
    msg = _error(default_params_raw)
    assert msg.startswith("sae.k = 'many' is invalid")


def test_out_of_range_names_bound(default_params_raw: dict) -> None:
    default_params_raw["data"]["test_fraction"] = 1.5
    msg = _error(default_params_raw)
    assert "data.test_fraction = 1.5" in msg and "less than 1" in msg


def test_bad_choice_lists_valid_ones(default_params_raw: dict) -> None:
    default_params_raw["data"]["on_bad_image"] = "sometimes"
    msg = _error(default_params_raw)
    assert "valid: error, skip" in msg


def test_unknown_dataset_suggests(default_params_raw: dict) -> None:
    default_params_raw["dataset"] = "fashion_mnst"
    msg = _error(default_params_raw)
    assert "did you mean 'fashion_mnist'" in msg and "oxford_pets" in msg


def test_layer_must_belong_to_model(default_params_raw: dict) -> None:
    default_params_raw["layer"] = "block3"
    msg = _error(default_params_raw)
    assert "layer = 'block3'" in msg and "up_ft1" in msg
    default_params_raw.update(model="tiny-dit", layer="block3")
    assert parse_params(default_params_raw).layer == "block3"


def test_embedded_layers_follow_channels(default_params_raw: dict) -> None:
    default_params_raw["model_train"]["channels"] = [32, 64]
    default_params_raw["layer"] = "up_ft1"
    assert parse_params(default_params_raw).layer_names() == ["bottleneck", "up_ft0", "up_ft1"]
    default_params_raw["layer"] = "up_ft3"
    assert "valid: bottleneck, up_ft0, up_ft1" in _error(default_params_raw)


@pytest.mark.parametrize("t", [-1, 1000, 5000])
def test_t_outside_training_range(default_params_raw: dict, t: int) -> None:
    default_params_raw["t"] = t
    assert "0 <= t < 1000" in _error(default_params_raw)


def test_prompt_rejected_for_unconditional_model(default_params_raw: dict) -> None:
    default_params_raw["prompt"] = "from_clip"
    assert "takes no text conditioning" in _error(default_params_raw)
    default_params_raw["model"] = "tiny-sd"
    assert parse_params(default_params_raw).prompt == "from_clip"


def _at_size(raw: dict, model: str, size: int, layer: str = "up_ft1") -> dict:
    raw.update(model=model, layer=layer)
    raw["data"]["image_size"] = size
    return raw


def test_image_size_must_suit_the_model(default_params_raw: dict) -> None:
    # The embedded default's 32 px would feed SD-1.5 4x4 latents (native 512 px): refused, naming both.
    msg = _error(_at_size(default_params_raw, "sd15", 32))
    assert "data.image_size = 32" in msg and "native 512 px" in msg and "data.any_image_size: true" in msg
    assert "multiple of 64" in _error(_at_size(default_params_raw, "sd15", 480))
    assert "expected 256 to 1024" in _error(_at_size(default_params_raw, "sd15", 2048))
    assert "native 256 px" in _error(_at_size(default_params_raw, "dit-xl-2-256", 64, layer="block3"))
    for model, size, layer in [("sd15", 512, "up_ft1"), ("sd21", 768, "up_ft1"), ("dit-xl-2-512", 512, "block3"),
                               ("if-i-l", 64, "up_ft1"), ("ddpm-cifar10", 32, "up_ft1"), ("tiny-sd", 32, "up_ft1")]:
        assert parse_params(_at_size(default_params_raw, model, size, layer)).data.image_size == size
    # The embedded model's native size and halvings are model_train's.
    default_params_raw.update(model="fmnist-ddpm", layer="bottleneck")
    default_params_raw["data"]["image_size"] = 36
    assert "multiple of 8" in _error(default_params_raw)
    default_params_raw["data"]["image_size"] = 128
    assert "native 32 px" in _error(default_params_raw)


def test_image_size_override_is_kept(default_params_raw: dict) -> None:
    raw = _at_size(default_params_raw, "sd15", 32)
    raw["data"]["any_image_size"] = True
    params = parse_params(raw)
    assert "native 512 px" in params.image_size_problem()


def test_clip_templates_are_the_authors(default_params_raw: dict) -> None:
    # NOTES-reference, "from_CLIP" (the authors' released code): ViT-B/32 and three templates.
    assert parse_params(default_params_raw).extract.clip_model == "openai/clip-vit-base-patch32"
    expected = {
        "oxford_pets": "A photo of a {}, a type of pet.",
        "fgvc_aircraft": "A photo of a {}, an aircraft.",
        "caltech101": "A photo of a {}, an object.",
        "fashion_mnist": "A photo of a {}, a type of garment.",  # ours, same form
    }
    for dataset, template in expected.items():
        raw = {**default_params_raw, "dataset": dataset}
        assert parse_params(raw).clip_template == template


def test_imagefolder_needs_path(default_params_raw: dict) -> None:
    default_params_raw["dataset"] = "imagefolder"
    assert "data.path is required" in _error(default_params_raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_stage_exits_with_one_line(tmp_path: Path, repo_root: Path, default_params_raw: dict) -> None:
    default_params_raw["extract"]["batchsize"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params_raw))
    proc = subprocess.run(
        [sys.executable, "-c", "from pipeline.config import load_params_or_exit; load_params_or_exit()"],
        cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "extract.batchsize" in lines[0] and "extract.batch_size" in lines[0]
