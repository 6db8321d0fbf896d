"""The paper's reported numbers, keyed by the configuration that produced them, so that
`revelio compare` can print them beside a run with the same configuration.

Keys: (dataset, model, layer, t, prompt, image size). Values: `sigma_label` (Table 2,
σ_label@1000 on the dense pre-TopK activations, k = 32) and `diffc_top1` (Tables 3, 6-9,
Diff-C test top-1 in %). Transcribed from the paper's text; where two tables disagree
(Table 9's from_CLIP delta vs Table 7) the per-layer table wins.

Image sizes are the authors' code's (NOTES-reference): the k-SAE's features at 256 px, Diff-C's
at 512 px (the paper, Sec. 4: "randomly cropped and resized to 512 × 512"). So Table 2d's DiT
is DiT-XL/2-256, and Table 3's DiT is DiT-XL/2-512: the authors' Diff-C reshapes its tokens
with `.view(B, 1152, 32, 32)`, a 32 × 32 token grid, which only the 512 px model has. That
reshape also mixes channels and positions (this project transposes), so a DiT Diff-C number
here is not the paper's one for one.
"""

from __future__ import annotations

from pipeline.backbones.registry import BACKBONES

Key = tuple[str, str, str, int, str, int]

SAE_IMAGE_SIZE, DIFFC_IMAGE_SIZE = 256, 512
# DeepFloyd IF stage I takes 64 px images (its pipeline's first stage); the paper does not say
# what it fed IF, and 512 px would be 8x its native size: our reading, its native size.
IF_IMAGE_SIZE = BACKBONES["if-i-l"].image_size

_TABLE_2A = {  # σ_label by layer, SD-1.5, t = 25, empty prompt
    "oxford_pets": {"bottleneck": 9.48, "up_ft0": 9.90, "up_ft1": 8.59, "up_ft2": 9.67},
    "caltech101": {"bottleneck": 9.35, "up_ft0": 15.65, "up_ft1": 21.33, "up_ft2": 25.61},
}
_TABLE_2B = {  # σ_label by t, SD-1.5: Pets at up_ft1, Caltech-101 at bottleneck
    ("oxford_pets", "up_ft1"): {0: 8.99, 25: 8.59, 100: 8.87, 200: 8.94, 300: 9.01, 500: 9.53},
    ("caltech101", "bottleneck"): {0: 11.91, 25: 9.35, 100: 8.72, 200: 8.17, 300: 10.41, 500: 16.65},
}
_TABLE_2C = {"sd15": 8.59, "sd21": 9.67}  # σ_label, Pets, up_ft1, t = 25
_TABLE_2D = {6: 10.18, 10: 9.44, 14: 9.05, 18: 9.55, 22: 9.84}  # σ_label, Pets, DiT block, t = 25

# Diff-C top-1 (%) of SD-1.5 by t and layer, (empty, from_CLIP): Tables 6 (FGVC-Aircraft),
# 7 (Oxford-IIIT Pet), 8 (Caltech-101).
_LAYERS = ("bottleneck", "up_ft0", "up_ft1", "up_ft2")
_TABLES_678 = {
    "fgvc_aircraft": {
        0: ((52.27, 52.74), (48.79, 49.06), (64.09, 62.826), (50.55, 49.15)),
        25: ((51.76, 54.88), (50.49, 51.19), (65.07, 63.69), (50.25, 49.21)),
        100: ((51.07, 55.12), (49.48, 51.10), (64.15, 64.98), (51.37, 50.53)),
        200: ((50.91, 52.51), (49.63, 49.99), (63.88, 63.13), (50.53, 50.55)),
    },
    "oxford_pets": {
        0: ((68.79, 84.33), (66.99, 79.50), (88.28, 90.11), (77.79, 80.67)),
        25: ((69.97, 85.25), (73.29, 84.17), (88.61, 90.68), (81.63, 85.28)),
        100: ((69.53, 85.88), (67.07, 81.33), (88.29, 90.97), (78.82, 84.36)),
        200: ((68.03, 86.43), (65.87, 81.79), (86.89, 90.32), (78.49, 84.79)),
    },
    "caltech101": {
        0: ((85.83, 92.13), (85.75, 89.68), (86.75, 88.18), (79.11, 80.28)),
        25: ((87.59, 91.32), (86.54, 90.81), (87.72, 91.08), (81.07, 82.69)),
        100: ((88.28, 92.41), (88.18, 90.66), (87.99, 92.05), (82.02, 84.73)),
        200: ((88.36, 91.65), (87.23, 90.73), (89.22, 92.26), (82.69, 85.63)),
    },
}
_TABLE_9_GENERIC = {25: 88.61 - 3.14, 200: 86.89 - 3.13}  # Pets, up_ft1, "a photo of a pet"
_TABLE_3 = {  # Pets, empty prompt, other architectures (SD-1.5's rows are Table 7's)
    ("sd21", "bottleneck", 25): 56.80,
    ("sd21", "bottleneck", 200): 56.15,
    ("sd21", "up_ft1", 25): 84.74,
    ("sd21", "up_ft1", 200): 81.77,
    ("dit-xl-2-512", "block10", 25): 87.49,
    ("dit-xl-2-512", "block10", 200): 80.89,
    ("dit-xl-2-512", "block14", 25): 88.61,
    ("dit-xl-2-512", "block14", 200): 83.02,
    ("if-i-l", "bottleneck", 25): 61.16,
    ("if-i-l", "bottleneck", 200): 54.08,
    ("if-i-l", "up_ft1", 25): 84.08,
    ("if-i-l", "up_ft1", 200): 76.09,
}


def _build() -> dict[Key, dict[str, float]]:
    out: dict[Key, dict[str, float]] = {}

    def sigma(key: tuple[str, str, str, int, str], value: float) -> None:
        out.setdefault((*key, SAE_IMAGE_SIZE), {})["sigma_label"] = round(value, 3)

    def top1(key: tuple[str, str, str, int, str], value: float) -> None:
        size = IF_IMAGE_SIZE if key[1] == "if-i-l" else DIFFC_IMAGE_SIZE
        out.setdefault((*key, size), {})["diffc_top1"] = round(value, 3)

    for dataset, layers in _TABLE_2A.items():
        for layer, v in layers.items():
            sigma((dataset, "sd15", layer, 25, "empty"), v)
    for (dataset, layer), by_t in _TABLE_2B.items():
        for t, v in by_t.items():
            sigma((dataset, "sd15", layer, t, "empty"), v)
    for model, v in _TABLE_2C.items():
        sigma(("oxford_pets", model, "up_ft1", 25, "empty"), v)
    for block, v in _TABLE_2D.items():
        sigma(("oxford_pets", "dit-xl-2-256", f"block{block}", 25, "empty"), v)
    for dataset, by_t in _TABLES_678.items():
        for t, row in by_t.items():
            for layer, (empty, clip) in zip(_LAYERS, row, strict=True):
                top1((dataset, "sd15", layer, t, "empty"), empty)
                top1((dataset, "sd15", layer, t, "from_clip"), clip)
    for t, v in _TABLE_9_GENERIC.items():
        top1(("oxford_pets", "sd15", "up_ft1", t, "generic"), v)
    for (model, layer, t), v in _TABLE_3.items():
        top1(("oxford_pets", model, layer, t, "empty"), v)
    return out


PAPER: dict[Key, dict[str, float]] = _build()


def paper_value(
    dataset: str, model: str, layer: str, t: int, prompt: str, image_size: int | None, metric: str
) -> float | None:
    """The paper's number for this configuration and metric ("sigma_label", "diffc_top1"), or
    None (also when the image size is not the one the paper's number was measured at)."""
    if image_size is None:
        return None
    return PAPER.get((dataset, model, layer, int(t), prompt, int(image_size)), {}).get(metric)
