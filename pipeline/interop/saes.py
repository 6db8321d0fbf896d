"""Take a fitted k-SAE to SAELens or EleutherAI sparsify, and bring theirs back.

Both libraries store an SAE as a folder of one safetensors file and a `cfg.json`; the k-SAE
(`pipeline.sae.model`) has the same four tensors under other names and layouts:

    ours (sae.safetensors)   SAELens TopK (sae_weights.safetensors)   sparsify (sae.safetensors)
    W_enc  (n, d)            W_enc  (d, n)  (transposed)              encoder.weight (n, d)
    b_enc  (n,)              b_enc  (n,)                              encoder.bias   (n,)
    W_dec  (n, d)            W_dec  (n, d)                            W_dec          (n, d)
    b_pre  (d,)              b_dec  (d,)  apply_b_dec_to_input        b_dec          (d,)

All three subtract that bias before the encoder and add it after the decoder, so the map is a
relabelling: export and import are exact (bit-identical tensors both ways).

What differs, and is not a relabelling (`tests/interop/test_saes.py` checks each against the real
libraries):

- **The activation.** Ours keeps the k largest pre-activations as they are (Eq. 3: TopK alone,
  values may be negative). SAELens' TopK applies ReLU *after* the selection; sparsify applies
  it *before* (`fused_encoder`: relu then topk). On a sample whose k largest pre-activations
  are all positive, the three give the same indices and values; where some are not, SAELens
  zeroes those latents and sparsify replaces them by other, zero-valued latents. Encodings and
  reconstructions agree on the positive part of our code.
- **Decoder initialisation** (training only): ours `transpose` (sparsify's) or `independent`
  (the authors' released code); SAELens' TopK draws W_dec Kaiming-uniform and sets
  W_enc = W_decᵀ. An imported SAE keeps the `decoder_init` its export recorded, else
  `transpose`.
- **AuxK** (training only): ours optional (`sae.auxk_alpha`, off in the embedded default);
  sparsify always on dead latents; SAELens by `aux_loss_coefficient`. Not part of the files.

The export carries our config's provenance (key, features hash, training params) in the
target's metadata (SAELens `metadata`, a `revelio` entry of sparsify's cfg.json, which its
loader ignores), and the import restores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from pipeline.files import publish_dir
from pipeline.sae.model import KSae, SaeConfig, load_sae, save_sae

Format = Literal["saelens", "sparsify"]
FORMATS: tuple[str, ...] = ("saelens", "sparsify")
# The SAELens release whose format the export writes and the tests load it with.
SAELENS_VERSION = "6.54.12"
_SAELENS_WEIGHTS = "sae_weights.safetensors"
_SPARSIFY_WEIGHTS = "sae.safetensors"
_CFG = "cfg.json"


def export_sae(sae_dir: str | Path, out_dir: str | Path, to: Format) -> Path:
    """Write the k-SAE of `sae_dir` (a `models/sae/...` folder) as a `to` folder at `out_dir`."""
    if to not in FORMATS:
        raise ValueError(f"unknown export format {to!r}: choose one of {', '.join(FORMATS)}")
    model, config = load_sae(Path(sae_dir))
    extra = {k: v for k, v in config.items() if k not in ("sae", "num_latents")}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if to == "saelens":
        tensors = {"W_enc": state["W_enc"].T.contiguous(), "b_enc": state["b_enc"], "W_dec": state["W_dec"],
                   "b_dec": state["b_pre"]}
        cfg = _saelens_cfg(model.cfg, extra)
        weights = _SAELENS_WEIGHTS
    else:  # sparsify
        tensors = {"encoder.weight": state["W_enc"], "encoder.bias": state["b_enc"], "W_dec": state["W_dec"],
                   "b_dec": state["b_pre"]}
        cfg = _sparsify_cfg(model.cfg, extra)
        weights = _SPARSIFY_WEIGHTS
    with publish_dir(out_dir) as tmp:
        # "format": "pt" is what safetensors' own torch writer records (sparsify saves that way).
        save_file(tensors, tmp / weights, metadata={"format": "pt"})
        (tmp / _CFG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def detect_format(folder: str | Path) -> Format:
    """Which library wrote `folder`: SAELens has `sae_weights.safetensors`, sparsify `sae.safetensors`
    beside its `cfg.json` (ours has `sae.safetensors` beside `config.json`)."""
    folder = Path(folder)
    if not (folder / _CFG).is_file():
        raise FileNotFoundError(f"{folder}: no {_CFG} here (not a SAELens or sparsify SAE folder)")
    if (folder / _SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (folder / _SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    raise FileNotFoundError(f"{folder}: {_CFG} but neither {_SAELENS_WEIGHTS} (SAELens) nor {_SPARSIFY_WEIGHTS} (sparsify)")


def import_sae(folder: str | Path, out_dir: str | Path, fmt: Format | None = None) -> Path:
    """Write the SAELens or sparsify TopK SAE of `folder` as a k-SAE folder at `out_dir`
    (`sae.safetensors` + `config.json`, loadable with `pipeline.sae.model.load_sae`)."""
    folder = Path(folder)
    fmt = fmt or detect_format(folder)
    cfg = json.loads((folder / _CFG).read_text())
    if fmt == "saelens":
        _check(cfg, folder, _SAELENS_REQUIRED)
        t = load_file(folder / _SAELENS_WEIGHTS)
        state = {"W_enc": t["W_enc"].T.contiguous(), "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_pre": t["b_dec"]}
        extra = dict((cfg.get("metadata") or {}).get("revelio") or {})
    elif fmt == "sparsify":
        _check(cfg, folder, _SPARSIFY_REQUIRED)
        t = load_file(folder / _SPARSIFY_WEIGHTS)
        state = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_pre": t["b_dec"]}
        extra = dict(cfg.get("revelio") or {})
    else:
        raise ValueError(f"unknown SAE format {fmt!r}: choose one of {', '.join(FORMATS)}")
    d_in, k = int(cfg["d_in"]), int(cfg["k"])
    num_latents, d = state["W_enc"].shape
    if d != d_in:
        raise ValueError(f"{folder}: encoder weight has input size {d}, but {_CFG} says d_in = {d_in}")
    if num_latents % d_in:
        raise ValueError(f"{folder}: {num_latents} latents is not a whole multiple of d_in = {d_in} (our k-SAE has n = expansion × d)")
    decoder_init = extra.pop("decoder_init", "transpose")
    model = KSae(SaeConfig(d_in=d_in, expansion=num_latents // d_in, k=k, decoder_init=decoder_init), device="meta")
    model.load_state_dict({name: v.to(torch.float32) for name, v in state.items()}, assign=True)
    extra["imported_from"] = {"format": fmt, "path": str(folder)}
    with publish_dir(out_dir) as tmp:
        save_sae(model, tmp, extra=extra)
    return Path(out_dir)


def _metadata(cfg: SaeConfig, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "decoder_init": cfg.decoder_init}


def _saelens_cfg(cfg: SaeConfig, extra: dict[str, Any]) -> dict[str, Any]:
    # SAELens' TopKSAEConfig fields (6.x: `architecture` picks the class); `metadata` is free-form.
    return {
        "architecture": "topk",
        "d_in": cfg.d_in,
        "d_sae": cfg.num_latents,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "model_name": extra.get("model"),
            "hook_name": _hook_name(extra),
            "revelio": _metadata(cfg, extra),
        },
    }


def _sparsify_cfg(cfg: SaeConfig, extra: dict[str, Any]) -> dict[str, Any]:
    # SparseCoderConfig's fields plus d_in (what SparseCoder.save_to_disk writes); its loader
    # drops unknown fields, so the provenance rides along under "revelio".
    return {
        "activation": "topk",
        "expansion_factor": cfg.expansion,
        "normalize_decoder": True,
        "num_latents": cfg.num_latents,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": cfg.d_in,
        "revelio": _metadata(cfg, extra),
    }


def _hook_name(extra: dict[str, Any]) -> str | None:
    if "layer" not in extra:
        return None
    return f"{extra['layer']}@t{extra['t']}" if "t" in extra else str(extra["layer"])


# Settings of the libraries' configs that the k-SAE has no counterpart for: an import refuses
# any other value (absent keys take these, the libraries' defaults).
_SAELENS_REQUIRED = {"architecture": "topk", "apply_b_dec_to_input": True, "normalize_activations": "none",
                     "rescale_acts_by_decoder_norm": False, "reshape_activations": "none"}
_SPARSIFY_REQUIRED = {"activation": "topk", "transcode": False, "skip_connection": False}


def _check(cfg: dict[str, Any], folder: Path, required: dict[str, Any]) -> None:
    """Refuse what our k-SAE cannot represent, naming the cfg.json key at fault."""
    for key, value in required.items():
        if cfg.get(key, value) != value:
            raise ValueError(f"{folder / _CFG}: {key} = {cfg[key]!r}; only {key} = {value!r} maps onto the k-SAE")
