"""Typed, validated parameters: `params.yaml` → `Params`.

Every stage reads its parameters through `load_params`, never by parsing YAML itself, so an
unknown key, a wrong type or an out-of-range value is caught once, here, with a one-line
message that names the key, the bad value and the valid choices.

pydantic does the type and range checking; this module only adds what a researcher needs
on top: dotted key paths, "did you mean" suggestions for typos, and the checks that span
groups (a layer the chosen model has, a `t` inside its `[0, T)`).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from pipeline.backbones.registry import BACKBONES, get_backbone
from pipeline.errors import ConfigError
from pipeline.paths import CONTROLS, Key

# Dataset name → the domain word of its images (ours: `revelio datasets`, CLIP templates below).
DATASETS: dict[str, str] = {
    "oxford_pets": "pet",
    "fgvc_aircraft": "aircraft",
    "caltech101": "object",
    "fashion_mnist": "garment",
    "digits": "digit",
    "imagefolder": "object",
    "unrel": "object",
}

# `prompt: from_clip`: the text CLIP scores each class with and the denoiser is conditioned on.
# The three of the paper's datasets are the authors' (NOTES-reference, "from_CLIP"); the rest
# are ours, in the same form.
CLIP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "A photo of a {}, a type of pet.",
    "fgvc_aircraft": "A photo of a {}, an aircraft.",
    "caltech101": "A photo of a {}, an object.",
    **{
        name: f"A photo of a {{}}, a type of {domain}."
        for name, domain in DATASETS.items()
        if name not in ("oxford_pets", "fgvc_aircraft", "caltech101")
    },
}

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "fp32", "bf16", "fp16"]


class _Group(BaseModel):
    # forbid: a misspelt key must fail loudly, not silently keep its default.
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class SplitCounts(_Group):
    train: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class DataParams(_Group):
    # Side of the square images the backbone sees (resize shorter side + center crop).
    image_size: int = Field(32, ge=8, le=2048)
    # Seeded stratified subset per class and split (null = all images).
    max_per_class: SplitCounts = SplitCounts()
    # Source folder for `imagefolder` and `unrel`.
    path: str | None = None
    # Optional `imagefolder` split file: CSV with columns `path,split` (path relative to `path`).
    split_file: str | None = None
    # Where torchvision datasets are downloaded to / looked for (kept outside DVC outputs).
    raw_root: str = "raw"
    # Fraction of each class held out as test where a dataset has no official split.
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)
    # error: stop and list the bad files; skip: leave them out and record them in skipped.csv.
    on_bad_image: Literal["error", "skip"] = "error"
    # Let torchvision download a missing dataset (needs network).
    download: bool = True
    # Run an image size the model does not suit (Params.image_size_problem); the reason is
    # recorded in the latents' provenance.
    any_image_size: bool = False


class ModelTrainParams(_Group):
    """The embedded `fmnist-ddpm` model trained by the `model` stage."""

    channels: list[int] = Field(default_factory=lambda: [32, 64, 64, 128], min_length=2, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_groups: int = Field(8, ge=1)
    image_size: int = Field(32, ge=8, le=256)
    # 0 = the architecture at initialisation (the random-weights baseline for probes).
    # 1120 steps of 64 at lr 2e-3 (held-out ε-MSE 0.219 / 0.094 / 0.038 at t = 25 / 100 / 250)
    # beat 560 of 128 at 1e-3 (0.253 / 0.105 / 0.041) in the same time: at this budget the
    # model is far from converged and more, smaller steps help; a cosine decay did worse, and
    # lr 4e-3 (0.211 at t = 25) stalled at batch 16 (README, "The embedded model").
    steps: int = Field(1120, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    num_train_timesteps: int = Field(1000, ge=2)
    seed: int = Field(0, ge=0)
    # Training-curve rows (reports/model_train.csv): mean loss every `log_every` steps.
    log_every: int = Field(10, ge=1)
    # Held-out denoising ε-MSE, trained vs init: a fixed subset of the test split, fixed noise.
    eval_images: int = Field(1000, ge=1)
    eval_timesteps: list[int] = Field(default_factory=lambda: [25, 100, 250], min_length=1)
    # Sample grid (reports/figures/model_samples.png): this many DDIM samples of `sample_steps` steps.
    num_samples: int = Field(64, ge=1, le=1024)
    sample_steps: int = Field(50, ge=1)
    device: Device = "auto"
    dtype: DType = "auto"

    @model_validator(mode="after")
    def _groups_divide(self) -> "ModelTrainParams":
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(
                f"model_train.channels {self.channels} must all be divisible by "
                f"model_train.norm_groups = {self.norm_groups}"
            )
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(
                f"model_train.image_size = {self.image_size} must be divisible by "
                f"2**(len(model_train.channels) - 1) = {2 ** (len(self.channels) - 1)} (one halving per down block)"
            )
        bad_t = [t for t in self.eval_timesteps if not 0 <= t < self.num_train_timesteps]
        if bad_t:
            raise ValueError(
                f"model_train.eval_timesteps {bad_t} out of range: expected 0 <= t < "
                f"model_train.num_train_timesteps = {self.num_train_timesteps}"
            )
        return self


class ExtractParams(_Group):
    # Stored views per train image: view 0 = resize + center crop, others seeded augmentations.
    views: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    # Noise draws averaged per tap (DIFT uses 8).
    ensemble: int = Field(1, ge=1)
    # DiT: add noise at t (default) or pass t only to the timestep embedding (authors' code).
    dit_noise: Literal["add", "embed_only"] = "add"
    device: Device = "auto"
    dtype: DType = "auto"
    batch_size: int = Field(16, ge=1)
    # true = one sample per forward, so a tap is bit-identical whatever batch it is in (kernels
    # pick algorithms by batch size). false = forwards of `batch_size` from the start of each
    # store shard: the same samples always share a forward, so a store still reproduces, and
    # it is 4-7x faster on a 2-core AVX2 CPU, 8-13x on a GPU (bench.taps, README).
    batch_invariant: bool = False
    # Store full feature maps (Diff-C needs them); false = pooled only.
    fmap: bool = True
    num_workers: int = Field(0, ge=0)
    # Samples per store shard; null = about 64 MB per shard, at most 1024 samples.
    shard_size: int | None = Field(None, ge=1)
    # The authors' CLIP (NOTES-reference); openai/clip-vit-large-patch14 is the stronger one.
    clip_model: str = "openai/clip-vit-base-patch32"
    # Prompt for `prompt: generic`; null = the authors' "A photo of a pet", for every dataset.
    generic_prompt: str | None = None


class SaeParams(_Group):
    # Latents = expansion x d (the paper: 64, k = 32).
    expansion: int = Field(64, ge=1)
    k: int = Field(32, ge=1)
    lr: float = Field(4e-4, gt=0.0)
    warmup_steps: int = Field(500, ge=0)
    batch_size: int = Field(8192, ge=1)
    # Training samples in all (the paper: 83,886,080 at batch 8192 = 10,240 steps).
    num_samples: int = Field(83_886_080, ge=1)
    b_pre_init: Literal["mean", "geometric_median"] = "mean"
    # transpose: decoder = normalised encoder copy (OpenAI, sparsify); independent: authors' code.
    decoder_init: Literal["transpose", "independent"] = "transpose"
    # AuxK loss weight on dead latents (0 = the paper; OpenAI uses 1/32) and its k.
    auxk_alpha: float = Field(0.0, ge=0.0)
    auxk_k: int = Field(256, ge=1)
    # A latent is dead when it has not fired in this many training samples.
    dead_window: int = Field(10_000_000, ge=1)
    # Most activating train images kept per latent (eval/render use the first few).
    top_images: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    # Precision of the TopK selection matmul (values and training stay fp32); auto = bf16
    # where the hardware multiplies it natively.
    dtype: DType = "auto"


class DiffcParams(_Group):
    width: int = Field(1024, ge=1)
    # The paper states no rate; the authors' run.sh passes 0.0 (NOTES-reference, "Diff-C dropout").
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lr: float = Field(1e-4, gt=0.0)
    lr_min: float = Field(5e-5, ge=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(30, ge=1)
    flip: bool = True
    # A stratified share of train held out as a validation split (whole images: all views of
    # one on the same side), scored after every epoch to report the best epoch beside the
    # last one. 0 = none: the paper trains on the whole train split and reports one number.
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # One Diff-C per seed (weights, dropout, flips, batch order); metrics report their mean and
    # std: a 2,000-image test split alone has a standard error near 0.8 points.
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: Device = "auto"
    dtype: DType = "auto"

    @model_validator(mode="after")
    def _distinct_seeds(self) -> "DiffcParams":
        if any(seed < 0 for seed in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"diffc.seeds must be distinct non-negative ints, got {self.seeds}")
        return self


class EvalParams(_Group):
    top_latents: int = Field(1000, ge=1)
    top_images: int = Field(10, ge=2)
    min_fires: int = Field(10, ge=0)
    # The linear probe (pipeline.report.probe): logistic regression's inverse L2 strength, fixed
    # (never tuned), and its lbfgs iteration cap.
    probe_c: float = Field(1.0, gt=0.0)
    probe_max_iter: int = Field(2000, ge=1)


class RenderParams(_Group):
    num_latents: int = Field(6, ge=1)
    top_images: int = Field(9, ge=1)
    select: Literal["rank", "purity", "ids"] = "purity"
    latent_ids: list[int] = Field(default_factory=list)
    pca_layers: list[str] = Field(default_factory=list)
    thumb_size: int = Field(64, ge=8)


class Params(_Group):
    dataset: Literal[tuple(DATASETS)]  # type: ignore[valid-type]
    model: Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
    layer: str
    t: int
    prompt: Literal["empty", "generic", "from_clip"] = "empty"
    # Local directory holding the model's weights (diffusers layout); null = hub cache.
    model_path: str | None = None
    data: DataParams = DataParams()
    model_train: ModelTrainParams = ModelTrainParams()
    extract: ExtractParams = ExtractParams()
    sae: SaeParams = SaeParams()
    diffc: DiffcParams = DiffcParams()
    eval: EvalParams = EvalParams()
    render: RenderParams = RenderParams()
    # Which row of the study these params run (`pipeline.paths.CONTROLS`): not a params.yaml
    # key but each stage's `--control` (dvc.yaml runs one stage per row), see `for_control`.
    _control: str = PrivateAttr("trained")

    def for_control(self, control: str) -> Params:
        """These params for the study's `control` row (its outputs: `key`)."""
        if control not in CONTROLS:
            raise ConfigError(f"unknown control {control!r}; valid: {', '.join(CONTROLS)}")
        other = self.model_copy()
        other._control = control
        return other

    @property
    def control(self) -> str:
        return self._control

    @property
    def init_seed(self) -> int:
        """The seed the `init` control draws its denoiser from: `model_train.seed`, so that for the
        embedded model the init row is exactly the weights its training started from."""
        return self.model_train.seed

    @property
    def backbone(self):
        return get_backbone(self.model)

    def layer_names(self) -> list[str]:
        spec = self.backbone
        return spec.layer_names(len(self.model_train.channels) if spec.embedded else None)

    @property
    def num_train_timesteps(self) -> int:
        """T of the model's scheduler: `t` lies in [0, T)."""
        spec = self.backbone
        return self.model_train.num_train_timesteps if spec.embedded else spec.num_train_timesteps

    @property
    def key(self) -> Key:
        """The study cell and row these params select (its outputs' paths: `Key`)."""
        return Key(self.dataset, self.model, self.layer, self.t, self._control)

    @property
    def domain(self) -> str:
        return DATASETS[self.dataset]

    def image_size_problem(self) -> str | None:
        """Why `data.image_size` does not suit the model, or None (the embedded model's native
        size and halvings follow `model_train`)."""
        spec, size = self.backbone, self.data.image_size
        if spec.embedded:
            train = self.model_train
            return spec.image_size_problem(size, native=train.image_size, multiple=2 ** (len(train.channels) - 1))
        return spec.image_size_problem(size)

    @property
    def clip_template(self) -> str:
        """The dataset's `prompt: from_clip` text, one `{}` for the class."""
        return CLIP_TEMPLATES[self.dataset]

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        spec = self.backbone
        layers = self.layer_names()
        if self.layer not in layers:
            raise ValueError(_one_of("layer", self.layer, layers, f"for model {self.model}"))
        T = self.num_train_timesteps
        if not 0 <= self.t < T:
            raise ValueError(f"t = {self.t} is out of range for model {self.model}: expected 0 <= t < {T}")
        size_problem = self.image_size_problem()
        if size_problem and not self.data.any_image_size:
            raise ValueError(f"{size_problem}; set data.any_image_size: true to run it anyway (recorded in provenance)")
        if self.extract.dit_noise != "add" and spec.family != "dit":
            raise ValueError(
                f"extract.dit_noise = {self.extract.dit_noise!r} applies to DiT models only, not {self.model}: "
                f"use extract.dit_noise: add"
            )
        if self.prompt != "empty" and not spec.conditional_text:
            raise ValueError(
                f"prompt = {self.prompt!r} is invalid for model {self.model}, which takes no text "
                f"conditioning: use prompt: empty"
            )
        for key, wanted in (("eval.top_images", self.eval.top_images), ("render.top_images", self.render.top_images)):
            if wanted > self.sae.top_images:
                raise ValueError(
                    f"{key} = {wanted} exceeds sae.top_images = {self.sae.top_images}, the top images "
                    f"fit_sae keeps per latent: raise sae.top_images"
                )
        if self.dataset in ("imagefolder", "unrel") and not self.data.path:
            raise ValueError(f"data.path is required for dataset {self.dataset}: set it to the image folder")
        return self


def _one_of(key: str, value: Any, valid: list[str], where: str = "") -> str:
    hint = difflib.get_close_matches(str(value), valid, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f" {where}" if where else ""
    return f"{key} = {value!r} is invalid{where}{suggestion}; valid: {', '.join(valid)}"


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at `loc` (for suggesting the key a typo meant)."""
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_error(err: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        siblings = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), siblings, n=1)
        suggestion = f" (did you mean {'.'.join([*map(str, loc[:-1]), hint[0]])!r}?)" if hint else ""
        return f"unknown key {key!r}{suggestion}; valid keys here: {', '.join(siblings)}"
    if kind == "missing":
        return f"missing key {key!r}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        valid = [s.strip().strip("'") for s in expected.replace(" or ", ", ").split(",") if s.strip()]
        return _one_of(key, value, valid)
    if kind == "value_error":
        # Our own cross-field messages are already complete sentences.
        return err["msg"].removeprefix("Value error, ")
    return f"{key} = {value!r} is invalid: {err['msg'].lower()}"


def parse_params(raw: Any) -> Params:
    """Validate a parsed params mapping; raises ConfigError with a one-line message."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of parameters, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        # One line: the first problem is what the user fixes first; count the rest.
        # A typo shows up twice (unknown key + missing key): report the typo, it explains both.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(_format_error(errors[0]) + more) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return parse_params(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_params_or_exit(path: str | Path = "params.yaml") -> Params:
    """For stage entry points: a parameter problem ends the process with one line, exit 2."""
    try:
        return load_params(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
