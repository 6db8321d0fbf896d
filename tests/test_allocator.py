"""keep_freed_memory: a Diff-C training step stops faulting its activations in every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Total minor page faults over 8 steps after 3 of warm-up: the Diff-C input row's shape
# (64 maps of 1 x 32 x 32, width 64), one thread, in a fresh process each.
PROBE = """
import resource, sys
import torch
from pipeline.allocator import keep_freed_memory
from pipeline.diffc.model import DiffcConfig, build_diffc
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
model = build_diffc(DiffcConfig(in_channels=1, num_classes=10, width=64), seed=0)
opt = torch.optim.AdamW(model.parameters())
x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_steps_stop_faulting_pages_in() -> None:
    # Measured on the 2-core AVX2 VM: glibc's defaults 146k-223k faults (the 8 MiB activations
    # are mmapped and unmapped every step); tuned 0 or 4,096 (the heap grew once, 16 MiB).
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain > 20_000, plain
    assert tuned < 12_000, tuned
