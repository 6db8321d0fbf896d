"""What `pipeline.allocator.keep_freed_memory` buys a Diff-C training step on this CPU.

    python -m bench.allocator [--steps 20] [--threads 1] [--json FILE]

For each shape of the embedded study's Diff-C inputs (the input row's 1 x 32 x 32 maps, the
up blocks' 64 x 16 x 16, the bottleneck's 128 x 4 x 4; width 64, batch 64, AdamW), one fresh
process with glibc's malloc defaults and one with the thresholds raised time the same
forward + backward + step: median ms per step, minor page faults and system CPU time per
step, and the ratio default / tuned, both measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.record import record

SHAPES = {"input 1x32x32": (1, 32, 32), "up_ft 64x16x16": (64, 16, 16), "bottleneck 128x4x4": (128, 4, 4)}

WORKER = """
import json, resource, sys
import torch
from bench.timing import median_seconds
from pipeline.allocator import keep_freed_memory
from pipeline.diffc.model import DiffcConfig, build_diffc
mode, steps, c, h, w = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
if mode == "tuned":
    assert keep_freed_memory()
model = build_diffc(DiffcConfig(in_channels=c, num_classes=10, width=64), seed=0)
opt = torch.optim.AdamW(model.parameters())
x, y = torch.randn(64, c, h, w), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
usage = resource.getrusage(resource.RUSAGE_SELF)
seconds = median_seconds(step, steps)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": 1e3 * seconds, "faults": (after.ru_minflt - usage.ru_minflt) / steps,
                  "sys_ms": 1e3 * (after.ru_stime - usage.ru_stime) / steps}))
"""


def step_stats(mode: str, steps: int, shape: tuple[int, int, int], threads: int) -> dict[str, float]:
    """One fresh process (`mode` plain or tuned): median ms, minor faults and system ms per step."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(steps), *map(str, shape)],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process (after 3 of warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Diff-C seed's share on 2 cores: 1)")
    parser.add_argument("--json", type=Path, default=None, help="append machine-readable rows here")
    args = parser.parse_args()
    print(f"{'shape':<20} {'default ms':>10} {'tuned ms':>9} {'ratio':>6} {'faults':>15} {'sys ms':>13}")
    for name, shape in SHAPES.items():
        plain, tuned = (step_stats(mode, args.steps, shape, args.threads) for mode in ("plain", "tuned"))
        ratio = plain["ms"] / tuned["ms"]
        print(
            f"{name:<20} {plain['ms']:>10.1f} {tuned['ms']:>9.1f} {ratio:>5.2f}x "
            f"{plain['faults']:>7.0f}->{tuned['faults']:<7.0f} {plain['sys_ms']:>5.1f}->{tuned['sys_ms']:<5.1f}"
        )
        for metric, value in (("default_ms", plain["ms"]), ("tuned_ms", tuned["ms"]), ("ratio", ratio)):
            record(args.json, "allocator", name, metric, value)


if __name__ == "__main__":
    main()
