"""Finding a backbone's weights (local directory, hub cache, download) and locking them.

Order of look-up for a hub model:
1. `model_path` (params) — a local directory in diffusers layout; used as is.
2. the Hugging Face cache (`HF_HUB_CACHE`, the snapshot `refs/main` points to) — no network,
   so a cached model works offline and does not change under a run;
3. a download of only the files the adapter loads (non-variant safetensors, else .bin;
   never the multi-GB single-file checkpoints or fp16/EMA variants) — unless `HF_HUB_OFFLINE`.
When all fail the error says which hub id was looked for, where the cache is, which files to
put there, and that `model_path` can point at a local copy instead.

Models the pipeline makes itself (`tiny-*`, the embedded `fmnist-ddpm`) live in
`models/backbones/<model>/`, written by the `model` stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.backbones.registry import BackboneSpec, Family
from pipeline.errors import WeightsNotFound
from pipeline.files import atomic_write
from pipeline.paths import backbone_dir

Source = Literal["model_path", "hub", "local"]
LOCK_NAME = "lock.json"


@dataclass(frozen=True)
class Component:
    """One part of a diffusers-layout repository (e.g. `unet/`)."""

    name: str
    # Candidate folders in order; "" is the repository root (google/ddpm-* keep the UNet there).
    folders: tuple[str, ...]
    # A file whose presence marks the folder as holding this component (any of these names).
    marker: str | tuple[str, ...]
    has_weights: bool = True

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.marker,) if isinstance(self.marker, str) else self.marker


def _parts(*names: str) -> tuple[Component, ...]:
    known = {
        "unet": Component("unet", ("unet",), "config.json"),
        "transformer": Component("transformer", ("transformer",), "config.json"),
        "vae": Component("vae", ("vae",), "config.json"),
        "text_encoder": Component("text_encoder", ("text_encoder",), "config.json"),
        "tokenizer": Component("tokenizer", ("tokenizer",), "tokenizer_config.json", has_weights=False),
        "scheduler": Component("scheduler", ("scheduler",), "scheduler_config.json", has_weights=False),
    }
    return tuple(known[n] for n in names)


FAMILY_COMPONENTS: dict[Family, tuple[Component, ...]] = {
    "sd": _parts("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "dit": _parts("transformer", "vae", "scheduler"),
    "if": _parts("unet", "text_encoder", "tokenizer", "scheduler"),
    "ddpm": (
        Component("unet", ("unet", ""), "config.json"),
        Component("scheduler", ("scheduler", ""), "scheduler_config.json", has_weights=False),
    ),
}

# A transformers CLIPModel repository (for `prompt: from_clip`): everything at the root.
CLIP_COMPONENTS: tuple[Component, ...] = (
    Component("model", ("",), "config.json"),
    # transformers < 5 saved `preprocessor_config.json` (the hub repos have it), 5.x `processor_config.json`.
    Component(
        "image_processor", ("",), ("preprocessor_config.json", "processor_config.json"), has_weights=False
    ),
    Component("tokenizer", ("",), "tokenizer_config.json", has_weights=False),
)

# Small text files a component's loader may read (configs, tokenizer vocabularies).
_META_SUFFIXES = (".json", ".txt", ".model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: Source
    hub_id: str | None
    # Commit hash of the hub snapshot; None for local directories.
    revision: str | None
    # Component name → folder inside `path` ("" = root).
    folders: dict[str, str]
    # Files (relative to `path`) the loaders read: configs, tokenizer files, weights.
    files: tuple[str, ...] = field(default=())

    def subfolder(self, component: str) -> str | None:
        """For diffusers/transformers `from_pretrained(path, subfolder=...)`."""
        return self.folders[component] or None


# ---------------------------------------------------------------------------------------------
# Choosing files


def _is_variant(filename: str) -> bool:
    # "diffusion_pytorch_model.fp16.safetensors", "model.fp16-00001-of-00002.safetensors",
    # "diffusion_pytorch_model.non_ema.bin": a dot inside the stem marks a variant.
    for suffix in _WEIGHT_SUFFIXES:
        if filename.endswith(suffix):
            return "." in filename[: -len(suffix)]
    return False


def select_files(
    files: Iterable[str], components: Sequence[Component]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Pick, from a repository listing, the folder and files for each component.

    Returns (folders, files, missing components). Per folder: every config/tokenizer text file,
    and the non-variant weights, safetensors preferred over .bin (a repo often has both).
    """
    by_folder: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    folders: dict[str, str] = {}
    chosen: set[str] = set()
    missing: list[str] = []
    for comp in components:
        folder = next((d for d in comp.folders if set(comp.markers) & set(by_folder.get(d, []))), None)
        if folder is None:
            missing.append(
                f"{comp.name} ({' or '.join(_show(d, m) for d in comp.folders for m in comp.markers)})"
            )
            continue
        names = by_folder[folder]
        picked = [n for n in names if n.endswith(_META_SUFFIXES)]
        if comp.has_weights:
            weights = [n for n in names if n.endswith(".safetensors") and not _is_variant(n)]
            weights = weights or [n for n in names if n.endswith(".bin") and not _is_variant(n)]
            if not weights:
                missing.append(f"{comp.name} weights ({_show(folder, '*.safetensors')} or *.bin)")
                continue
            picked += weights
        folders[comp.name] = folder
        chosen.update(f"{folder}/{n}" if folder else n for n in picked)
    if "model_index.json" in by_folder.get("", []):
        chosen.add("model_index.json")
    return folders, sorted(chosen), missing


def _show(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _list_dir(path: Path) -> list[str]:
    # Skip our own lock (it must not hash itself) and hidden folders such as `.cache/`.
    rels = (p.relative_to(path) for p in path.rglob("*") if p.is_file())
    return sorted(
        r.as_posix()
        for r in rels
        if r.as_posix() != LOCK_NAME and not any(s.startswith(".") for s in r.parts)
    )


def _local(
    path: Path, components: Sequence[Component], source: Source, **meta: str | None
) -> ResolvedWeights:
    folders, files, missing = select_files(_list_dir(path), components)
    if missing:
        raise WeightsNotFound(
            f"{path} is not a complete diffusers-layout model: missing {'; '.join(missing)}"
        )
    return ResolvedWeights(path=path, source=source, folders=folders, files=tuple(files), **meta)


# ---------------------------------------------------------------------------------------------
# Resolving


def components_for(spec: BackboneSpec) -> tuple[Component, ...]:
    return FAMILY_COMPONENTS[spec.family]


def resolve_weights(
    spec: BackboneSpec,
    model_path: str | Path | None = None,
    *,
    root: Path = Path("."),
    cache_dir: str | Path | None = None,
) -> ResolvedWeights:
    """Where this backbone's weights are (see the module doc for the order)."""
    components = components_for(spec)
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise WeightsNotFound(f"model_path = {str(model_path)!r} is not a directory (model {spec.name})")
        return _local(path.resolve(), components, "model_path", hub_id=spec.hub_id, revision=None)
    if spec.hub_id is None:
        path = backbone_dir(spec.name, root)
        how = "trained" if spec.embedded else "built"
        if not (path.is_dir() and any(path.iterdir())):
            raise WeightsNotFound(
                f"no weights for model {spec.name} in {path}: they are {how} by the model stage; "
                f"run `python -m stages.model` (or `dvc repro model`) first"
            )
        return _local(path, components, "local", hub_id=None, revision=None)
    return resolve_hub(spec.hub_id, components, cache_dir=cache_dir, what=f"model {spec.name}")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or (env or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The hub-cache snapshot `refs/main` points to (else the newest snapshot), or None.

    Read from the cache's documented layout rather than via `snapshot_download(local_files_only=
    True)`, which reports a snapshot holding only the files we download (no fp16 variants, no
    single-file checkpoints) as incomplete.
    """
    from huggingface_hub.file_download import repo_folder_name

    storage = hub_cache_dir(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / "main"
    if ref.is_file():
        snap = storage / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = [p for p in (storage / "snapshots").glob("*") if p.is_dir()]
    return max(snaps, key=lambda p: p.stat().st_mtime) if snaps else None


def resolve_hub(
    repo_id: str,
    components: Sequence[Component],
    *,
    cache_dir: str | Path | None = None,
    what: str | None = None,
) -> ResolvedWeights:
    """Hub cache first (no network), then a download of the needed files unless offline."""
    what = what or repo_id
    problem = "it is not in the hub cache"
    snap = cached_snapshot(repo_id, cache_dir)
    if snap is not None:
        folders, files, missing = select_files(_list_dir(snap), components)
        if not missing:
            return ResolvedWeights(snap, "hub", repo_id, snap.name, folders, tuple(files))
        problem = f"the cached snapshot {snap} lacks {'; '.join(missing)}"
    if hub_offline():
        raise WeightsNotFound(
            _not_found(repo_id, components, cache_dir, what, f"{problem}, and HF_HUB_OFFLINE is set")
        )

    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id)
        listing = [s.rfilename for s in info.siblings or []]
        folders, files, missing = select_files(listing, components)
        if missing:
            raise WeightsNotFound(f"hub repository {repo_id} ({what}) has no {'; '.join(missing)}")
        path = Path(
            snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, allow_patterns=list(files))
        )
    except WeightsNotFound:
        raise
    except GatedRepoError:
        raise WeightsNotFound(
            f"{repo_id} ({what}) is gated: accept its licence at https://huggingface.co/{repo_id} and log in "
            f"with `hf auth login`, or put a local copy in a directory and set model_path"
        ) from None
    except RepositoryNotFoundError:
        raise WeightsNotFound(f"hub repository {repo_id!r} ({what}) does not exist or is private") from None
    except Exception as exc:  # network failures come as several libraries' exception types
        reason = f"{problem}, and the download failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        raise WeightsNotFound(_not_found(repo_id, components, cache_dir, what, reason)) from None
    return ResolvedWeights(path, "hub", repo_id, info.sha, folders, tuple(files))


def _not_found(
    repo_id: str, components: Sequence[Component], cache_dir: str | Path | None, what: str, why: str
) -> str:
    include = " ".join(f'"{_show(c.folders[0], "*")}"' for c in components)
    return (
        f"weights for {what} not found: looked for hub id {repo_id!r} in the Hugging Face cache "
        f"{hub_cache_dir(cache_dir)}, but {why}. Either download them where there is network "
        f"(`hf download {repo_id} --include {include} model_index.json`) and copy the cache "
        f"there (or point HF_HUB_CACHE at it), or put a diffusers-layout copy in a local directory "
        f"and set `model_path: <dir>` in params.yaml"
    )


# ---------------------------------------------------------------------------------------------
# Lock


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def lock_record(
    model: str, weights: ResolvedWeights, *, root: Path = Path("."), cache_dir: str | Path | None = None
) -> dict:
    """What identifies the weights: source, snapshot, revision, sha256 of every file loaded.

    The snapshot is written relative to the hub cache (or to the repository root for models
    the pipeline makes), so the same weights give the same lock on every machine and DVC
    reruns downstream stages only when the weights really change.
    """
    files = {rel: sha256_file(weights.path / rel) for rel in weights.files}
    digest = hashlib.sha256(
        "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(files.items())).encode()
    ).hexdigest()
    return {
        "model": model,
        "source": weights.source,
        "hub_id": weights.hub_id,
        "revision": weights.revision,
        "snapshot": _portable(weights.path, root, hub_cache_dir(cache_dir)),
        "folders": weights.folders,
        "files": files,
        "weights_sha256": digest,
    }


def _portable(path: Path, root: Path, cache: Path) -> str:
    path = path.absolute()
    for base, label in ((cache, "$HF_HUB_CACHE"), (root, None)):
        try:
            rel = path.relative_to(base.absolute()).as_posix()
        except ValueError:
            continue
        return f"{label}/{rel}" if label else rel
    return str(path)


def write_lock(record: dict, out_dir: Path) -> Path:
    return atomic_write(out_dir / LOCK_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_lock(model: str, root: Path = Path(".")) -> dict | None:
    path = backbone_dir(model, root) / LOCK_NAME
    return json.loads(path.read_text()) if path.is_file() else None
