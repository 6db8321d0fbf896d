"""Small random-weight models with the real architectures, for tests and CI.

`tiny-sd` and `tiny-dit` are diffusers' own classes (UNet2DConditionModel / DiTTransformer2DModel,
AutoencoderKL, a CLIPTextModel with a byte-level tokenizer, the schedulers SD and DiT ship
with), built from small configs with a fixed seed and saved with the pipelines'
`save_pretrained`, i.e. in exactly the layout of the hub repositories. The adapters then load
them through the same `from_pretrained` path as real weights. Same seed → same bytes.

Also here, for tests: a tiny unconditional pixel UNet2DModel (the pixel-DDPM adapter), a tiny
DeepFloyd-IF-style pipeline (the `if` adapter: IF-I-L itself is gated and 900M + T5-XXL), and a
tiny CLIPModel + processor (the `from_clip` stand-in for openai/clip-vit-large-patch14); and
SD-1.5's full-size UNet in memory for shape tests and the benchmark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

# The tiny text encoder's width; tiny-sd's cross-attention must match it.
TINY_TEXT_DIM = 32
TINY_MAX_TOKENS = 77


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Build under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_clip_tokenizer():
    """A CLIPTokenizer over the 256 byte symbols (plus end-of-word forms) and no merges.

    Real CLIP merges are a 49k-line file we cannot download; without merges every character is
    one token, which exercises the same tokenizer class, padding and special tokens.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols = [*alphabet, *(c + "</w>" for c in alphabet), "<|startoftext|>", "<|endoftext|>"]
    vocab = {s: i for i, s in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TINY_MAX_TOKENS)


def _tiny_text_encoder(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        return CLIPTextModel(config).eval()


def _tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    # Four blocks like SD's VAE, so the latent is image / 8 with 4 channels.
    with _seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.18215,
        ).eval()


def sd_scheduler():
    """SD-1.5's scheduler, as its scheduler/scheduler_config.json describes it."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(out_dir: Path, seed: int = 0) -> Path:
    """SD-1.5's architecture (4 down / 4 up blocks, cross-attention in three) at toy width."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32, 32, 32),
            norm_num_groups=8,
            cross_attention_dim=TINY_TEXT_DIM,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ).eval()
    scheduler = sd_scheduler()
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(seed + 1),
        text_encoder=_tiny_text_encoder(tokenizer, seed + 2),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_dit(out_dir: Path, seed: int = 0) -> Path:
    """DiT's architecture (patch 2, adaLN-zero blocks, learned sigma, 1000 classes + null)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    with _seeded(seed):
        transformer = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=1000,
        ).eval()
    # DiT-XL-2's scheduler config (linear betas).
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False
    )
    pipe = DiTPipeline(transformer=transformer, vae=_tiny_vae(seed + 1), scheduler=scheduler)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_ddpm(out_dir: Path, seed: int = 0, in_channels: int = 1, image_size: int = 16) -> Path:
    """An unconditional pixel UNet2DModel like the embedded model, saved as `unet/` + `scheduler/`."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with _seeded(seed):
        unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            layers_per_block=1,
            block_out_channels=(8, 16, 16, 16),
            norm_num_groups=4,
            down_block_types=("DownBlock2D",) * 4,
            up_block_types=("UpBlock2D",) * 4,
        ).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    return out_dir


def tiny_t5_tokenizer():
    """A T5Tokenizer (Unigram) over single lowercase letters, digits and a few marks."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    pieces += [f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=[(p, -1.0) for p in pieces], extra_ids=0)


def build_tiny_if(out_dir: Path, seed: int = 0) -> Path:
    """DeepFloyd IF stage I's architecture at toy size (diffusers' own IF test configuration:
    simple cross-attention blocks, text-projected encoder states, text time-embedding), with a
    tiny T5 encoder, saved with IFPipeline. Two UNet blocks, so two up-block layers."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with _seeded(seed):
        text_encoder = T5EncoderModel(config).eval()
    with _seeded(seed + 1):
        unet = UNet2DConditionModel(
            sample_size=16,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            in_channels=3,
            out_channels=6,
            cross_attention_dim=32,
            encoder_hid_dim=32,
            attention_head_dim=8,
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            act_fn="gelu",
        ).eval()
    # IF's scheduler config (cosine betas, learned variance).
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    pipe = IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel + CLIPProcessor in transformers' layout (for `from_clip` tests)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with _seeded(seed):
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


SYNTHETIC_BUILDERS = {"tiny-sd": build_tiny_sd, "tiny-dit": build_tiny_dit}


def build_synthetic(model: str, out_dir: Path, seed: int = 0) -> Path:
    try:
        builder = SYNTHETIC_BUILDERS[model]
    except KeyError:
        raise KeyError(
            f"no synthetic builder for model {model!r}; valid: {', '.join(SYNTHETIC_BUILDERS)}"
        ) from None
    return builder(out_dir, seed)


# ---------------------------------------------------------------------------------------------
# Full-size SD-1.5 UNet in memory (random weights, no download): tap-shape tests and bench/taps.py

# stable-diffusion-v1-5/unet/config.json, the entries that shape the network (the rest are
# UNet2DConditionModel defaults with the same values).
SD15_UNET_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_TEXT_SHAPE = (77, 768)


def build_sd15_unet(dtype: torch.dtype = torch.float32, seed: int = 0):
    """SD-1.5's UNet (860M parameters) with random weights, built fast.

    Built on the meta device and filled in place: PyTorch's default init of 860M parameters
    takes ~3x longer. The fill follows those defaults (uniform ±1/sqrt(fan_in) for weights and
    biases, norms at weight 1 / bias 0) so activations have realistic scales.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    unet = unet.to_empty(device="cpu")
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with _seeded(seed), torch.no_grad():
        for module in unet.modules():
            params = dict(module.named_parameters(recurse=False))
            if isinstance(module, norm_types):
                for name, p in params.items():
                    p.fill_(1.0 if name == "weight" else 0.0)
                continue
            weight = params.get("weight")
            fan_in = weight[0].numel() if weight is not None and weight.ndim > 1 else None
            for p in params.values():
                bound = 1.0 / (fan_in or p.shape[-1]) ** 0.5
                p.uniform_(-bound, bound)
        # Cast tensor by tensor: ModelMixin.to(dtype) warns about modules to keep in fp32,
        # which concerns from_pretrained loading, not a model filled at random.
        if dtype != torch.float32:
            for p in unet.parameters():
                p.data = p.data.to(dtype)
    return unet.eval()


def sd15_in_memory(dtype: torch.dtype = torch.float32, seed: int = 0, device: torch.device | str = "cpu"):
    """The sd15 adapter around `build_sd15_unet` (no VAE, no text encoder: feed latents and
    prompt embeddings directly)."""
    from pipeline.backbones.registry import get_backbone
    from pipeline.backbones.sd import assemble
    from pipeline.backbones.weights import ResolvedWeights

    weights = ResolvedWeights(Path("<in-memory sd15 unet>"), "local", None, None, {})
    scheduler = sd_scheduler()
    unet = build_sd15_unet(dtype, seed).to(device)
    return assemble(get_backbone("sd15"), weights, unet, scheduler, None, None)
