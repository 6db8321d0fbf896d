"""The one interface every backbone family fills in, and the tap machinery they share.

A `Backbone` is a plain dataclass: the loaded diffusers denoiser and scheduler, the modules
whose outputs are the named layers, and a few family functions (run the denoiser, encode
images, encode text, reshape a tap). The family modules (`sd`, `dit`, `ddpm`) only build it;
everything that must behave the same across families — layer and timestep checks, noise,
early exit, batch invariance, ensembles — lives here once.

Early exit: forward hooks on the requested modules record their outputs, and the hook on the
deepest one raises a private exception that ends the forward. The alternative — re-running
the model's blocks ourselves in order — would copy diffusers' forward (timestep embedding,
skip connections, upsample sizes, attention kwargs) and silently diverge when diffusers
changes it. With hooks the computation up to the tap *is* diffusers' own forward, so a tap
equals what the full pass computes by construction (and the tests check it bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from pipeline.backbones.noise import batch_noise, check_timestep
from pipeline.backbones.registry import BackboneSpec
from pipeline.backbones.weights import ResolvedWeights
from pipeline.paths import INPUT_LAYER
from pipeline.seeds import mix_seed

CondKind = Literal["text", "class", "none"]
NoiseMode = Literal["add", "embed_only"]


@dataclass(frozen=True)
class Conditioning:
    """What the denoiser is conditioned on: one row for the whole batch, or one per sample."""

    kind: CondKind
    # Prompt text per row (provenance; empty for class / unconditional models).
    texts: tuple[str, ...] = ()
    # (rows, tokens, dim) text-encoder hidden states, for kind == "text".
    text_embeds: torch.Tensor | None = None
    # (rows,) int64 class ids, for kind == "class".
    class_labels: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        if self.text_embeds is not None:
            return self.text_embeds.shape[0]
        if self.class_labels is not None:
            return self.class_labels.shape[0]
        return 1

    def rows(self, ids: Sequence[int] | torch.Tensor) -> Conditioning:
        """A conditioning whose row k is this one's row ids[k] (e.g. per-image CLIP prompts)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        return replace(
            self,
            texts=tuple(self.texts[i] for i in ids.tolist()) if self.texts else (),
            text_embeds=None
            if self.text_embeds is None
            else self.text_embeds[ids.to(self.text_embeds.device)],
            class_labels=None
            if self.class_labels is None
            else self.class_labels[ids.to(self.class_labels.device)],
        )

    def for_batch(self, batch: int) -> Conditioning:
        if self.kind == "none" or self.num_rows == batch:
            return self
        if self.num_rows == 1:
            return self.rows([0] * batch)
        raise ValueError(f"conditioning has {self.num_rows} rows but the batch has {batch} samples")


class _StopForward(Exception):
    """Raised by the hook on the deepest requested layer to end the forward pass there."""


def capture(
    modules: Mapping[str, nn.Module],
    names: Sequence[str],
    run: Callable[[], Any],
    stop_after: str | None = None,
) -> dict[str, torch.Tensor]:
    """Outputs of `modules[name]` for each name while `run()` calls the model.

    With `stop_after`, the forward ends as soon as that module has produced its output.
    Outputs are cloned (except the last one when stopping, which nothing else can touch) so a
    later in-place operation inside the model cannot change a recorded tap.
    """
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name in captured:
                # Taps assume each block runs once per forward; a model that reuses a block
                # would make "the output" ambiguous.
                raise RuntimeError(f"layer {name} ran twice in one forward pass")
            out = output[0] if isinstance(output, tuple) else output
            captured[name] = out.detach() if name == stop_after else out.detach().clone()
            if name == stop_after:
                raise _StopForward

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.inference_mode():
            run()
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never ran layer(s) {', '.join(missing)}")
    return captured


def _identity_view(tap: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
    return tap


@dataclass
class Backbone:
    """A loaded diffusion model, ready to encode images and read its layers."""

    spec: BackboneSpec
    weights: ResolvedWeights
    denoiser: nn.Module
    scheduler: Any
    # Name → module whose output is that layer, in forward order.
    layer_modules: dict[str, nn.Module]
    device: torch.device
    dtype: torch.dtype
    # (model input x_t, int64 timesteps (B,), conditioning) → calls the denoiser's forward.
    forward: Callable[[torch.Tensor, torch.Tensor, Conditioning], Any]
    # Images in [-1, 1] (B, 3, H, W) on self.device → clean model input x0 (fp32); None for a
    # denoiser built in memory without its VAE (benchmarks, shape tests).
    encode_images: Callable[[torch.Tensor], torch.Tensor] | None
    conditioning_kind: CondKind
    # Texts → (len(texts), tokens, dim) embeddings; None for models without text conditioning.
    encode_texts: Callable[[Sequence[str]], torch.Tensor] | None = None
    # The class id meaning "no class" for class-conditional models (DiT: 1000).
    null_class: int | None = None
    # Raw module output → C×h×w map (DiT tokens are reshaped; UNet maps pass through).
    tap_view: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _identity_view
    # "add": x_t = add_noise(x0, noise, t); "embed_only": x0 as is, t only in the embedding.
    noise_mode: NoiseMode = "add"

    # -- names and checks --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def uses_noise(self) -> bool:
        return self.noise_mode == "add"

    def layer_names(self) -> list[str]:
        return list(self.layer_modules)

    def check_layers(self, layers: str | Sequence[str]) -> list[str]:
        """Requested layers, validated and in forward order.

        The pseudo-layer `input` (pipeline.paths.INPUT_LAYER) is the denoiser's input x_t itself,
        first in forward order: the `input` control's tap.
        """
        layers = [layers] if isinstance(layers, str) else list(layers)
        valid = [INPUT_LAYER, *self.layer_names()]
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise ValueError(
                f"unknown layer {', '.join(map(repr, unknown))} for model {self.name}; "
                f"valid: {', '.join(valid)}"
            )
        if not layers:
            raise ValueError(f"no layer requested for model {self.name}; valid: {', '.join(valid)}")
        return sorted(set(layers), key=valid.index)

    def check_t(self, t: int) -> int:
        return check_timestep(t, self.num_train_timesteps, f"model {self.name}")

    # -- inputs ------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor, *, batch_invariant: bool = True) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) → clean model input x0 (fp32, contiguous, on self.device).

        batch_invariant: encode one image at a time (see `taps`); False = the batch in one call.
        """
        if self.encode_images is None:
            raise ValueError(f"model {self.name} was built without its image encoder")
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        images = images.to(self.device, self.dtype)
        encode = self.encode_images
        step = 1 if batch_invariant else images.shape[0]
        with torch.inference_mode():
            # Contiguous in, contiguous out: see model_input on memory formats.
            chunks = [encode(images[i : i + step].contiguous()) for i in range(0, images.shape[0], step)]
        return torch.cat(chunks).contiguous()

    def add_noise(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """The scheduler's forward process q(x_t | x0) at raw timestep t, computed in fp32."""
        t = self.check_t(t)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from input shape {tuple(x0.shape)}")
        timesteps = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.scheduler.add_noise(x0.float(), noise.to(x0.device).float(), timesteps)

    def model_input(self, x0: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """What the denoiser sees at t: model dtype, its device, contiguous (NCHW) memory.

        Contiguous because the memory format is part of what picks the kernels: a latent that
        came out of a oneDNN convolution can carry channels-last strides, the first conv then
        answers in channels-last too, and GroupNorm's channels-last kernel sums in another
        order — the same sample changed in the last bits depending on how its batch had been
        assembled (found while testing batch invariance; see the memory-format test).
        """
        x0 = x0.to(self.device)
        if not self.uses_noise:
            return x0.to(self.dtype).contiguous()
        if noise is None:
            raise ValueError(f"model {self.name} adds noise at t: pass noise of shape {tuple(x0.shape)}")
        return self.add_noise(x0, t, noise).to(self.dtype).contiguous()

    # -- conditioning ------------------------------------------------------------------------

    def text_conditioning(self, texts: Sequence[str]) -> Conditioning:
        """One row per text; each text is encoded alone (batch-invariant)."""
        if self.encode_texts is None:
            raise ValueError(f"model {self.name} takes no text conditioning: use prompt: empty")
        texts = tuple(texts)
        with torch.inference_mode():
            embeds = torch.cat([self.encode_texts([text]) for text in texts])
        return Conditioning("text", texts=texts, text_embeds=embeds)

    def null_conditioning(self) -> Conditioning:
        """The unconditional input: empty prompt, null class, or nothing."""
        if self.conditioning_kind == "text":
            return self.text_conditioning([""])
        if self.conditioning_kind == "class":
            assert self.null_class is not None
            return Conditioning("class", class_labels=torch.tensor([self.null_class], device=self.device))
        return Conditioning("none")

    # -- taps --------------------------------------------------------------------------------

    def taps(
        self,
        x0: torch.Tensor,
        t: int,
        cond: Conditioning,
        layers: str | Sequence[str],
        noise: torch.Tensor | None,
        *,
        early_exit: bool = True,
        batch_invariant: bool = True,
    ) -> dict[str, torch.Tensor]:
        """{layer: (B, C, h, w)} activations of the requested layers at timestep t.

        x0: clean model input (latents or pixels) (B, C, H, W); noise: same shape (ignored —
        may be None — when noise_mode is "embed_only"). early_exit stops the forward after the
        deepest requested layer. Taps come back in the model's dtype.

        batch_invariant (default): one sample per forward. CPU and GPU libraries choose kernels
        by problem size (MKL's gemv for the (1, 256) timestep MLP vs gemm for (B, 256);
        oneDNN / cuDNN convolution algorithms and blocking; cuBLAS split-K), so the same sample
        computed inside batches of different sizes differs in the last bits — measured up to
        3e-6 (fp32, this CPU), 2e-3 (fp32 tiny UNet, H200, where cuDNN may use TF32) and 0.09
        (bf16 SD-1.5, H200). Fixed-shape zero-padded micro-batches were tried and are not
        enough: at SD-1.5 size a sample's result still depended on its position / neighbours
        (H200 bf16 and fp32, 16-thread CPU fp32). One sample per forward makes a tap a function
        of its own image, noise, t and conditioning only. Cost per image: ~1.2x on this CPU
        (SD-1.5, 256 px, vs batches of 2), 8x on an H200 vs batches of 8 and 13x vs 32 (SD-1.5
        bf16 512 px: 19.6 vs 1.5 ms/img). False runs the batch as given.
        """
        t = self.check_t(t)
        order = self.check_layers(layers)
        batch = x0.shape[0]
        cond = cond.for_batch(batch)
        if self.uses_noise and (noise is None or noise.shape != x0.shape):
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(
                f"model {self.name} adds noise at t: noise must have shape {tuple(x0.shape)}, got {got}"
            )
        if not batch_invariant or batch == 1:
            return self._taps(x0, t, cond, order, noise, early_exit)
        parts = [
            self._taps(
                x0[i : i + 1],
                t,
                cond.rows([i]),
                order,
                None if noise is None else noise[i : i + 1],
                early_exit,
            )
            for i in range(batch)
        ]
        return {name: torch.cat([p[name] for p in parts]) for name in order}

    def _taps(
        self,
        x0: torch.Tensor,
        t: int,
        cond: Conditioning,
        order: list[str],
        noise: torch.Tensor | None,
        early_exit: bool,
    ) -> dict[str, torch.Tensor]:
        x_in = self.model_input(x0, t, noise if self.uses_noise else None)
        modules = [name for name in order if name != INPUT_LAYER]
        out = {INPUT_LAYER: x_in} if INPUT_LAYER in order else {}
        if not modules:
            return out  # only the input: the denoiser need not run at all
        timesteps = torch.full((x_in.shape[0],), t, dtype=torch.long, device=self.device)
        raw = capture(
            self.layer_modules,
            modules,
            lambda: self.forward(x_in, timesteps, cond),
            stop_after=modules[-1] if early_exit else None,
        )
        return {**out, **{name: self.tap_view(raw[name], x_in) for name in modules}}


def extract_taps(
    backbone: Backbone,
    x0: torch.Tensor,
    t: int,
    cond: Conditioning,
    layers: str | Sequence[str],
    *,
    seed: int,
    indices: Sequence[int],
    views: Sequence[int] | int = 0,
    ensemble: int = 1,
    early_exit: bool = True,
    batch_invariant: bool = True,
) -> dict[str, torch.Tensor]:
    """Taps averaged over `ensemble` seeded noise draws (DIFT averages 8), in fp32.

    indices / views: each sample's manifest row and view, which with `seed` and the draw number
    fully determine its noise (pipeline.backbones.noise). Draws are summed in a fixed order, so the
    average is as reproducible as a single draw. A backbone that adds no noise (DiT
    "embed_only") is run once: its draws would all be equal.
    """
    if ensemble < 1:
        raise ValueError(f"extract.ensemble must be >= 1, got {ensemble}")
    if len(indices) != x0.shape[0]:
        raise ValueError(f"got {len(indices)} indices for a batch of {x0.shape[0]}")
    draws = ensemble if backbone.uses_noise else 1
    total: dict[str, torch.Tensor] = {}
    for draw in range(draws):
        noise = (
            batch_noise(x0.shape[1:], seed=seed, indices=indices, views=views, draw=draw)
            if backbone.uses_noise
            else None
        )
        out = backbone.taps(
            x0, t, cond, layers, noise, early_exit=early_exit, batch_invariant=batch_invariant
        )
        for name, value in out.items():
            total[name] = value.float() if name not in total else total[name] + value.float()
    return {name: value / draws for name, value in total.items()}


# The RNG stream a denoiser's initial weights are drawn from. The embedded trainer builds its
# UNet under the same stream (pipeline.embedded.train.build_unet), so the `init` control of
# the embedded model is exactly the weights its training started from.
INIT_STREAM = "ddpm.init"


def draw_initial_weights(denoiser: nn.Module, seed: int) -> None:
    """Re-draw `denoiser`'s weights in place as its constructor does, from `seed`.

    A fresh instance of the same class is built from the model's own diffusers config inside a
    forked RNG seeded with `mix_seed(seed, INIT_STREAM)` (the caller's RNG is untouched), and
    its parameters and buffers are copied in (cast to the denoiser's dtype). Copying in place
    keeps the layer hooks and the forward closure of the `Backbone` pointing at live modules.
    The encoder (VAE, pixels) is not touched: it defines the input space, not what diffusion
    training added.
    """
    config = getattr(denoiser, "config", None)
    if config is None or not hasattr(type(denoiser), "from_config"):
        raise TypeError(f"{type(denoiser).__name__} has no diffusers config to rebuild it at initialisation from")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, INIT_STREAM))
        fresh = type(denoiser).from_config(config)
    denoiser.load_state_dict(fresh.state_dict())
