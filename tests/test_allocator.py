"""keep_freed_memory: a Diff-C training step stops faulting its activations in every step."""

from __future__ import annotations

import sys

import pytest

from bench.allocator import SHAPES, step_stats


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_steps_stop_faulting_pages_in() -> None:
    # The Diff-C input row's shape (64 maps of 1 x 32 x 32, width 64), one thread, 8 steps after
    # 3 of warm-up, a fresh process each. Measured on the 2-core AVX2 VM: glibc's defaults
    # 18k-28k minor faults per step (the 8 MiB activations are mmapped and unmapped every
    # step); tuned 0-512 (the heap grew once, by 16 MiB, in some runs).
    shape = SHAPES["input 1x32x32"]
    plain, tuned = (step_stats(mode, 8, shape, threads=1)["faults"] for mode in ("plain", "tuned"))
    assert plain > 2_500, plain
    assert tuned < 1_500, tuned
