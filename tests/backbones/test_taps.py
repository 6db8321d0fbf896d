"""Taps of tiny-sd and tiny-dit against diffusers' own full forward, exactly (CPU, fp32).

The reference side uses only diffusers: the pipeline classes loaded from the same folder
(their own `encode_prompt`, VAE, scheduler `add_noise`) and plain forward hooks on the
modules the paper names (`unet.mid_block`, `unet.up_blocks[i]`, `transformer_blocks[i]`), on
a full, uninterrupted forward pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbones.base import Backbone, Conditioning, extract_taps
from pipeline.backbones.load import load_backbone
from pipeline.backbones.noise import batch_noise

T_STEP = 25
SHUFFLED = [3, 6, 0, 5, 1, 4, 2]


@pytest.fixture(scope="module")
def pipes(tiny_dirs: dict[str, Path]) -> dict[str, object]:
    from diffusers import DiTPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(
        tiny_dirs["tiny-sd"], safety_checker=None, requires_safety_checker=False
    )
    dit = DiTPipeline.from_pretrained(tiny_dirs["tiny-dit"])
    return {"tiny-sd": sd, "tiny-dit": dit}


def reference_taps(
    pipe: object, name: str, x0: torch.Tensor, t: int, noise: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Full diffusers forward with plain hooks; conditioning built by the pipeline itself."""
    batch = x0.shape[0]
    x_t = x0 if noise is None else pipe.scheduler.add_noise(x0, noise, torch.full((batch,), t))
    captured: dict[str, torch.Tensor] = {}
    if name == "tiny-sd":
        unet = pipe.unet
        modules = {"bottleneck": unet.mid_block, **{f"up_ft{i}": b for i, b in enumerate(unet.up_blocks)}}
        embeds, _ = pipe.encode_prompt("", "cpu", batch, do_classifier_free_guidance=False)
        run = lambda: unet(x_t, t, encoder_hidden_states=embeds)  # noqa: E731
    else:
        transformer = pipe.transformer
        modules = {f"block{i}": b for i, b in enumerate(transformer.transformer_blocks)}
        labels = torch.full((batch,), 1000)
        run = lambda: transformer(x_t, timestep=torch.full((batch,), t), class_labels=labels)  # noqa: E731
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, o.clone()))
        for n, m in modules.items()
    ]
    with torch.inference_mode():
        run()
    for h in handles:
        h.remove()
    if name == "tiny-dit":
        h = w = x0.shape[-1] // pipe.transformer.config.patch_size
        captured = {k: v.permute(0, 2, 1).reshape(batch, -1, h, w) for k, v in captured.items()}
    return captured


def _inputs(bb: Backbone, images: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = bb.encode(images)
    return x0, batch_noise(x0.shape[1:], seed=0, indices=indices)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_encode_equals_pipeline_vae(
    name: str, tiny_backbones: dict, pipes: dict, images: torch.Tensor
) -> None:
    bb, vae = tiny_backbones[name], pipes[name].vae
    x0 = bb.encode(images[:2])
    with torch.inference_mode():
        for i in range(2):
            ref = vae.encode(images[i : i + 1]).latent_dist.mode() * vae.config.scaling_factor
            assert torch.equal(x0[i : i + 1], ref)
    assert x0.shape == (2, 4, 8, 8) and x0.dtype == torch.float32


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_taps_equal_full_forward_hooks(
    name: str, tiny_backbones: dict, pipes: dict, images: torch.Tensor
) -> None:
    bb = tiny_backbones[name]
    x0, noise = _inputs(bb, images[:3], [0, 1, 2])
    layers = bb.layer_names()
    cond = bb.null_conditioning()
    # Batched path vs one batched reference forward.
    got = bb.taps(x0, T_STEP, cond, layers, noise, early_exit=False, batch_invariant=False)
    ref = reference_taps(pipes[name], name, x0, T_STEP, noise)
    assert list(got) == layers
    for layer in layers:
        assert torch.equal(got[layer], ref[layer]), layer
        assert got[layer].std() > 0  # a real activation, not a degenerate constant
    # Batch-invariant path (one sample per forward) vs per-sample reference forwards.
    got = bb.taps(x0, T_STEP, cond, layers, noise, early_exit=False, batch_invariant=True)
    for i in range(3):
        ref = reference_taps(pipes[name], name, x0[i : i + 1], T_STEP, noise[i : i + 1])
        for layer in layers:
            assert torch.equal(got[layer][i : i + 1], ref[layer]), (layer, i)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_early_exit_equals_full_pass_and_stops(name: str, tiny_backbones: dict, images: torch.Tensor) -> None:
    bb = tiny_backbones[name]
    x0, noise = _inputs(bb, images[:2], [0, 1])
    cond = bb.null_conditioning()
    layers = bb.layer_names()
    full = bb.taps(x0, T_STEP, cond, layers, noise, early_exit=False)
    for k, layer in enumerate(layers):
        calls: list[str] = []
        later = [bb.layer_modules[n] for n in layers[k + 1 :]]
        handles = [
            m.register_forward_hook(lambda *a, n=n, calls=calls: calls.append(n))
            for n, m in zip(layers[k + 1 :], later, strict=True)
        ]
        try:
            alone = bb.taps(x0, T_STEP, cond, [layer], noise, early_exit=True)
        finally:
            for h in handles:
                h.remove()
        assert list(alone) == [layer]
        assert torch.equal(alone[layer], full[layer]), layer
        assert calls == [], f"early exit at {layer} still ran {calls}"
    # Several layers at once come back in forward order, each equal to the full pass.
    pick = [layers[2], layers[0]]
    both = bb.taps(x0, T_STEP, cond, pick, noise)
    assert list(both) == [layers[0], layers[2]]
    assert all(torch.equal(both[n], full[n]) for n in both)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_same_image_alone_and_in_shuffled_batch_of_7(
    name: str, tiny_backbones: dict, images: torch.Tensor
) -> None:
    """Bit-identical latents and taps whatever the batch and the image's place in it.

    (With batch_invariant=False — the batch in one forward — this fails on this CPU: MKL and
    oneDNN pick other kernels for other batch sizes; see Backbone.taps.)
    """
    bb = tiny_backbones[name]
    cond = bb.null_conditioning()
    layers = bb.layer_names()
    rows = [100 + i for i in range(7)]  # manifest rows: noise follows the image, not its slot
    x0_batch = bb.encode(images[SHUFFLED])
    batch = extract_taps(bb, x0_batch, T_STEP, cond, layers, seed=0, indices=[rows[p] for p in SHUFFLED])
    for k, p in enumerate(SHUFFLED):
        x0_alone = bb.encode(images[p : p + 1])
        assert torch.equal(x0_batch[k : k + 1], x0_alone)
        alone = extract_taps(bb, x0_alone, T_STEP, cond, layers, seed=0, indices=[rows[p]])
        for layer in layers:
            assert torch.equal(batch[layer][k : k + 1], alone[layer]), (layer, p)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_memory_format_of_the_input_does_not_matter(
    name: str, tiny_backbones: dict, images: torch.Tensor
) -> None:
    """A latent with channels-last strides (as a oneDNN convolution can hand out) gives the same
    bits as a contiguous one: the first conv would otherwise answer in channels-last and
    GroupNorm's channels-last kernel sums in another order (found while testing batches)."""
    bb = tiny_backbones[name]
    x0 = bb.encode(images[:2])
    cond = bb.null_conditioning()
    noise = batch_noise(x0.shape[1:], seed=0, indices=[0, 1])
    layers = bb.layer_names()
    plain = bb.taps(x0, T_STEP, cond, layers, noise)
    strided = bb.taps(x0.contiguous(memory_format=torch.channels_last), T_STEP, cond, layers, noise)
    assert all(torch.equal(plain[n], strided[n]) for n in layers)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_taps_depend_on_t_noise_and_seed(name: str, tiny_backbones: dict, images: torch.Tensor) -> None:
    """Guards the equality tests against passing trivially (e.g. noise or t being ignored)."""
    bb = tiny_backbones[name]
    x0 = bb.encode(images[:1])
    cond = bb.null_conditioning()
    layer = bb.layer_names()[1]
    a = extract_taps(bb, x0, T_STEP, cond, layer, seed=0, indices=[0])[layer]
    assert not torch.equal(a, extract_taps(bb, x0, T_STEP + 1, cond, layer, seed=0, indices=[0])[layer])
    assert not torch.equal(a, extract_taps(bb, x0, T_STEP, cond, layer, seed=1, indices=[0])[layer])
    assert not torch.equal(a, extract_taps(bb, x0, T_STEP, cond, layer, seed=0, indices=[1])[layer])
    assert not torch.equal(
        a, extract_taps(bb, x0, T_STEP, cond, layer, seed=0, indices=[0], views=[1])[layer]
    )


def test_ensemble_is_the_mean_over_seeded_draws(tiny_backbones: dict, images: torch.Tensor) -> None:
    bb = tiny_backbones["tiny-sd"]
    x0 = bb.encode(images[:2])
    cond = bb.null_conditioning()
    got = extract_taps(bb, x0, T_STEP, cond, "up_ft1", seed=3, indices=[5, 9], ensemble=3)["up_ft1"]
    draws = [
        bb.taps(x0, T_STEP, cond, "up_ft1", batch_noise(x0.shape[1:], seed=3, indices=[5, 9], draw=e))[
            "up_ft1"
        ]
        for e in range(3)
    ]
    assert torch.allclose(got, torch.stack(draws).mean(0), atol=1e-6)
    assert torch.equal(got, (draws[0] + draws[1] + draws[2]) / 3)
    assert not torch.equal(got, draws[0])
    assert got.dtype == torch.float32


def test_unknown_layer_lists_valid_names(tiny_backbones: dict, images: torch.Tensor) -> None:
    for name, bb in tiny_backbones.items():
        x0 = torch.zeros(1, 4, 8, 8)
        with pytest.raises(ValueError) as err:
            bb.taps(x0, T_STEP, bb.null_conditioning(), ["up_ft9"], torch.zeros_like(x0))
        message = str(err.value)
        assert "'up_ft9'" in message and name in message
        assert ", ".join(bb.layer_names()) in message


@pytest.mark.parametrize("t", [-1, 1000, 5000])
def test_t_outside_range_fails_clearly(t: int, tiny_backbones: dict) -> None:
    bb = tiny_backbones["tiny-sd"]
    x0 = torch.zeros(1, 4, 8, 8)
    with pytest.raises(
        ValueError, match=rf"t = {t} is out of range for model tiny-sd: expected 0 <= t < 1000"
    ):
        bb.taps(x0, t, bb.null_conditioning(), ["bottleneck"], torch.zeros_like(x0))


def test_t_must_be_an_integer(tiny_backbones: dict) -> None:
    bb = tiny_backbones["tiny-dit"]
    x0 = torch.zeros(1, 4, 8, 8)
    with pytest.raises(TypeError, match="integer timestep"):
        bb.taps(x0, 25.0, bb.null_conditioning(), ["block0"], torch.zeros_like(x0))  # type: ignore[arg-type]
    # The last valid timestep works.
    out = bb.taps(x0, 999, bb.null_conditioning(), ["block0"], torch.zeros_like(x0))
    assert out["block0"].shape == (1, 32, 4, 4)


def test_noise_shape_is_checked(tiny_backbones: dict) -> None:
    bb = tiny_backbones["tiny-sd"]
    x0 = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match="noise must have shape"):
        bb.taps(x0, T_STEP, bb.null_conditioning(), ["bottleneck"], None)
    with pytest.raises(ValueError, match="noise must have shape"):
        bb.taps(x0, T_STEP, bb.null_conditioning(), ["bottleneck"], torch.zeros(1, 4, 8, 8))


def test_dit_embed_only_uses_clean_latents(tiny_dirs: dict, pipes: dict, images: torch.Tensor) -> None:
    """The authors' DiT variant: no noise added, t only reaches the timestep embedding."""
    bb = load_backbone("tiny-dit", model_path=tiny_dirs["tiny-dit"], noise_mode="embed_only")
    assert not bb.uses_noise
    x0 = bb.encode(images[:2])
    layers = bb.layer_names()
    got = bb.taps(x0, T_STEP, bb.null_conditioning(), layers, None, early_exit=False, batch_invariant=False)
    ref = reference_taps(pipes["tiny-dit"], "tiny-dit", x0, T_STEP, None)
    assert all(torch.equal(got[n], ref[n]) for n in layers)
    # Noise is irrelevant, and an ensemble runs once (compare with the per-sample path, which
    # extract_taps uses by default: the batch-as-given one differs in the last bits, see taps()).
    single = bb.taps(x0, T_STEP, bb.null_conditioning(), layers, None)
    ens = extract_taps(bb, x0, T_STEP, bb.null_conditioning(), layers, seed=0, indices=[0, 1], ensemble=4)
    assert all(torch.equal(ens[n], single[n].float()) for n in layers)
    # t still matters (through the embedding).
    other = bb.taps(x0, T_STEP + 100, bb.null_conditioning(), layers, None)
    assert not torch.equal(other["block0"], got["block0"])


def test_generic_prompt_conditioning_matches_pipeline(
    tiny_backbones: dict, pipes: dict, images: torch.Tensor
) -> None:
    """A non-empty prompt goes through the same text path as StableDiffusionPipeline."""
    bb, pipe = tiny_backbones["tiny-sd"], pipes["tiny-sd"]
    text = "a photo of a garment"
    cond = bb.text_conditioning([text])
    ref, _ = pipe.encode_prompt(text, "cpu", 1, do_classifier_free_guidance=False)
    assert torch.equal(cond.text_embeds, ref)
    assert not torch.equal(cond.text_embeds, bb.null_conditioning().text_embeds)
    x0 = bb.encode(images[:1])
    noise = batch_noise(x0.shape[1:], seed=0, indices=[0])
    got = bb.taps(x0, T_STEP, cond, ["up_ft1"], noise)
    x_t = pipe.scheduler.add_noise(x0, noise, torch.tensor([T_STEP]))
    captured: list[torch.Tensor] = []
    h = pipe.unet.up_blocks[1].register_forward_hook(lambda m, a, o: captured.append(o.clone()))
    with torch.inference_mode():
        pipe.unet(x_t, T_STEP, encoder_hidden_states=ref)
    h.remove()
    assert torch.equal(got["up_ft1"], captured[0])


def test_conditioning_rows_broadcast_and_select() -> None:
    embeds = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    cond = Conditioning("text", texts=("a", "b", "c"), text_embeds=embeds)
    picked = cond.rows([2, 0, 2])
    assert picked.texts == ("c", "a", "c") and torch.equal(picked.text_embeds, embeds[[2, 0, 2]])
    one = Conditioning("text", texts=("a",), text_embeds=embeds[:1])
    assert one.for_batch(4).num_rows == 4
    with pytest.raises(ValueError, match="3 rows but the batch has 2"):
        cond.for_batch(2)


def _digit_images(size: int, n: int = 6) -> torch.Tensor:
    """Real images: scikit-learn's 8×8 digits, upscaled to size×size RGB in [-1, 1]."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 8.0 - 1.0
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit", "tiny-ddpm"])
def test_bf16_taps_match_fp32(name: str, tiny_dirs: dict) -> None:
    """The extraction path (encode, noise at t, taps at every layer) in bf16, what `auto`
    picks on CPUs with bf16 units, against fp32 on the same real images and noise: every
    layer's taps within 5% relative L2 error (measured worst: 2.1%, tiny-sd's bottleneck), and each sample's
    pooled vector (the k-SAE's input) at cosine similarity ≥ 0.998."""
    size = 16 if name == "tiny-ddpm" else 64
    images = _digit_images(size)
    got: dict[str, dict[str, torch.Tensor]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        bb = load_backbone("ddpm-cifar10" if name == "tiny-ddpm" else name, model_path=tiny_dirs[name],
                           device="cpu", dtype=dtype)
        x0 = bb.encode(images)
        noise = batch_noise(x0.shape[1:], seed=0, indices=list(range(len(images))))
        got[str(dtype)] = bb.taps(x0, T_STEP, bb.null_conditioning(), bb.layer_names(), noise)
    ref, low = got["torch.float32"], got["torch.bfloat16"]
    for layer, want in ref.items():
        have = low[layer].float()
        err = ((have - want).norm() / want.norm()).item()
        assert err < 0.05, f"{name} {layer}: bf16 taps off by {err:.3g} (relative L2)"
        cos = torch.nn.functional.cosine_similarity(have.mean((2, 3)), want.mean((2, 3)), dim=1)
        assert cos.min() >= 0.998, f"{name} {layer}: pooled cosine {cos.min():.4f}"


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-dit"])
def test_input_pseudo_layer_is_the_denoisers_input_and_runs_nothing(
    name: str, tiny_backbones: dict, images: torch.Tensor
) -> None:
    """The `input` control's tap: x_t exactly as the denoiser sees it, without running it."""
    bb = tiny_backbones[name]
    x0, noise = _inputs(bb, images[:3], [0, 1, 2])
    calls: list[int] = []
    handle = bb.denoiser.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        got = bb.taps(x0, T_STEP, bb.null_conditioning(), ["input"], noise)
    finally:
        handle.remove()
    assert list(got) == ["input"] and calls == []
    assert torch.equal(got["input"], bb.model_input(x0, T_STEP, noise if bb.uses_noise else None))
    # With real layers too: the input comes first, the layers are unchanged.
    layer = bb.layer_names()[0]
    both = bb.taps(x0, T_STEP, bb.null_conditioning(), [layer, "input"], noise)
    assert list(both) == ["input", layer] and torch.equal(both["input"], got["input"])
    assert torch.equal(both[layer], bb.taps(x0, T_STEP, bb.null_conditioning(), [layer], noise)[layer])


def test_initial_weights_are_the_embedded_trainers_starting_point() -> None:
    """`draw_initial_weights(unet, seed)` re-draws exactly the weights `build_unet(seed)` starts
    training from, in place, and leaves the caller's RNG alone."""
    from pipeline.backbones.base import draw_initial_weights
    from pipeline.config import ModelTrainParams
    from pipeline.embedded.train import build_unet

    mt = ModelTrainParams(channels=[8, 16], norm_groups=4, image_size=16)
    start = build_unet(mt, seed=3).state_dict()
    unet = build_unet(mt, seed=11)  # other weights, same architecture (a "trained" model)
    module = unet.mid_block
    torch.manual_seed(5)
    rng = torch.random.get_rng_state()
    draw_initial_weights(unet, 3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert unet.mid_block is module  # in place: hooks on the layers stay valid
    for name, value in unet.state_dict().items():
        assert torch.equal(value, start[name]), name
    draw_initial_weights(unet, 4)
    assert not torch.equal(unet.conv_in.weight, start["conv_in.weight"])
