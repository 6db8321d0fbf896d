"""Image → class with a fitted Diff-C: the path `revelio classify` runs.

The same steps as the stages that built Diff-C's training features, for one new image:
view 0 (resize + center crop at `data.image_size`), the backbone's encoder (VAE or pixels),
seeded noise at `t`, the denoiser up to the Diff-C's layer (early exit), then Diff-C.
The layer, t and class names come from the Diff-C folder's config; model, prompt, image size
and extraction settings from params, checked against it. A new image has no manifest row:
its noise is seeded by (extract.seed, row 0), so every image gets the same noise draw and a
result never depends on which other images are classified with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.backbones.base import Backbone, Conditioning, extract_taps
from pipeline.backbones.prompts import clip_conditioning, clip_zero_shot, load_clip, run_conditioning
from pipeline.config import Params
from pipeline.data.images import load_image
from pipeline.diffc.model import DiffC, load_diffc
from pipeline.diffc.train import predict_topk
from pipeline.errors import ConfigError
from pipeline.features.backbone import load_for_params
from pipeline.features.extract import CLIP_IMAGE_SIZE
from pipeline.features.views import make_view


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # best first
    probs: list[float]
    seconds: float  # image → class, this image alone


@dataclass
class Classifier:
    params: Params
    backbone: Backbone
    diffc: DiffC
    class_names: list[str]
    layer: str
    t: int
    amp_dtype: torch.dtype | None
    clip: Any = None


def load_classifier(params: Params, diffc_dir: Path, root: Path = Path("."), *, device: str | None = None) -> Classifier:
    model, _, extra = load_diffc(diffc_dir)
    for key in ("model", "prompt"):
        if key in extra and extra[key] != getattr(params, key):
            raise ConfigError(
                f"{diffc_dir} was trained on {key} = {extra[key]!r} features but params say {getattr(params, key)!r}"
            )
    layer, t = extra.get("layer", params.layer), int(extra.get("t", params.t))
    params = params.model_copy(update={"layer": layer, "t": t})
    backbone = load_for_params(params, root, device=device)
    model = model.to(backbone.device)
    amp = backbone.dtype if backbone.dtype != torch.float32 else None
    clf = Classifier(params, backbone, model, list(extra["classes"]), layer, t, amp)
    if params.prompt == "from_clip":
        clf.clip = load_clip(params.extract.clip_model, device=backbone.device)
    return clf


def _conditioning(clf: Classifier, pil: Image.Image) -> Conditioning:
    params = clf.params
    if params.prompt != "from_clip":
        return run_conditioning(clf.backbone, params.prompt, params.extract.generic_prompt)
    # As extract does: CLIP sees view 0 at its own size and picks the class prompt.
    small = make_view(pil, CLIP_IMAGE_SIZE, seed=params.extract.seed, index=0, view=0)
    zs = clip_zero_shot(clf.clip, small[None], clf.class_names, params.clip_template)
    return clip_conditioning(clf.backbone, zs).rows(zs.predicted)


def classify(clf: Classifier, paths: list[Path], k: int = 5) -> list[Prediction]:
    params = clf.params
    out = []
    for path in paths:
        start = time.perf_counter()
        pil = load_image(path)
        image = make_view(pil, params.data.image_size, seed=params.extract.seed, index=0, view=0)
        x0 = clf.backbone.encode(image[None])
        taps = extract_taps(
            clf.backbone, x0, clf.t, _conditioning(clf, pil), [clf.layer],
            seed=params.extract.seed, indices=[0], views=[0], ensemble=params.extract.ensemble,
        )
        # The store keeps maps in fp16: round the same way so Diff-C sees what it was trained on.
        fmap = taps[clf.layer].to(torch.float16)
        probs, idx = predict_topk(clf.diffc, fmap, k=k, amp_dtype=clf.amp_dtype)
        if clf.backbone.device.type == "cuda":
            torch.cuda.synchronize(clf.backbone.device)
        out.append(
            Prediction(
                path=Path(path),
                classes=[clf.class_names[i] for i in idx[0].tolist()],
                probs=probs[0].tolist(),
                seconds=time.perf_counter() - start,
            )
        )
    return out
