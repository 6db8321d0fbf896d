"""The one-shot GPU benchmark (`bench/device.sh`): one table from five benches, row by row.

    python -m bench.device [--out DIR] [--dry-run] [--only NAME ...]

Rows, each a bench of its own run as a subprocess (a row that fails or runs out of time is
reported and the next one runs), on the default device in `auto` precision (bf16 on an H200):
- extract-sd15: SD-1.5's UNet (random weights) to `up_ft1` at 512 px, batched, store writer on:
  images/s (`bench.extract_rate`);
- extract-dit: DiT-XL/2 (256 px, random weights) to `block14`, the same;
- sae: the k-SAE at the paper's shape (d 1280, 81,920 latents, k 32, batch 4096) against
  EleutherAI sparsify with its own defaults: samples/s and held-out FVU (`bench.sae`; without
  `eai-sparsify` installed, ours alone and the row says so);
- diffc: Diff-C at the paper's shape (1280×32×32, width 1024, batch 16): train steps/s, and the
  share of an epoch fed by the store loader spent waiting for batches (`bench.diffc`);
- classify: image → class latency against the Diffusion Classifier's lower bound (one full UNet
  pass per class plus the VAE, one noise draw) (`bench.classify`).
Each bench's output goes to DIR/<row>.log as it runs; every number it measures is appended to
DIR/device.jsonl at once, and DIR/device.md (the table) is rewritten after each row, so a run
cut short keeps what finished. Sized for ≤ 5 minutes on one H200 (model building included).
`--dry-run`: tiny shapes on the CPU, fp32, in seconds (the test suite runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.record import read_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    name: str
    module: str
    args: tuple[str, ...]  # on the device
    dry_args: tuple[str, ...]  # --dry-run: tiny, CPU, fp32
    timeout_s: int


ROWS = (
    Row("extract-sd15", "bench.extract_rate",
        ("--model", "sd15", "--layer", "up_ft1", "--size", "512", "--batch", "32", "--images", "512"),
        ("--model", "tiny-sd", "--layer", "up_ft1", "--size", "64", "--batch", "4", "--images", "8",
         "--device", "cpu", "--dtype", "fp32"),
        120),
    Row("extract-dit", "bench.extract_rate",
        ("--model", "dit-xl-2-256", "--layer", "block14", "--size", "256", "--batch", "64", "--images", "1024"),
        ("--model", "tiny-dit", "--layer", "block2", "--size", "64", "--batch", "4", "--images", "8",
         "--device", "cpu", "--dtype", "fp32"),
        120),
    Row("sae", "bench.sae",
        ("--steps", "40", "--warmup", "5"),
        ("--d", "32", "--expansion", "4", "--k", "4", "--batch", "128", "--steps", "3", "--warmup", "1",
         "--device", "cpu", "--dtype", "fp32"),
        120),
    Row("diffc", "bench.diffc",
        ("--loader-samples", "1024"),
        ("--channels", "8", "--size", "8", "--width", "16", "--batch", "4", "--steps", "1", "--warmup", "1",
         "--classes", "3", "--loader-samples", "16", "--device", "cpu"),
        120),
    Row("classify", "bench.classify",
        ("--repeats", "3"),
        ("--model", "tiny-sd", "--size", "64", "--classes", "2", "--repeats", "1", "--device", "cpu"),
        120),
)


def markdown(records: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| row | metric | value |", "|---|---|---|"]
    for r in records:
        value = r["value"]
        shown = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        lines.append(f"| {r['row']} | {r['metric']} | {shown} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def run_row(row: Row, out: Path, dry_run: bool) -> str:
    """Run one bench; its output streams to the console and to out/<name>.log. Returns a status."""
    args = list(row.dry_args if dry_run else row.args)
    if row.module == "bench.sae" and importlib.util.find_spec("sparsify") is None:
        args.append("--no-sparsify")  # the row then holds ours alone
    cmd = [sys.executable, "-m", row.module, *args, "--json", str(out / "device.jsonl")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(out / f"{row.name}.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # A watchdog, not a deadline checked between lines: a bench can hang without printing.
        watchdog = threading.Timer(row.timeout_s, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(f"  [{row.name}] {line}")
                sys.stdout.flush()
                log.write(line)
            proc.wait()
        finally:
            timed_out = not watchdog.is_alive() and proc.returncode != 0
            watchdog.cancel()
    if timed_out:
        return f"timed out after {row.timeout_s} s"
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}, {seconds:.0f} s; see {row.name}.log)"
    note = " (sparsify not installed: ours only)" if "--no-sparsify" in args else ""
    return f"ok in {seconds:.0f} s{note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "out"),
                        help="folder for device.jsonl, device.md and the logs (default $OUT, else bench/out)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (seconds)")
    parser.add_argument("--only", nargs="+", choices=[r.name for r in ROWS], help="run these rows only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device.jsonl").unlink(missing_ok=True)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"bench/device.sh{' --dry-run' if args.dry_run else ''}, {machine()}, {when}"
    print(title, flush=True)
    statuses = []
    failed = 0
    for row in ROWS:
        if args.only and row.name not in args.only:
            continue
        status = run_row(row, args.out, args.dry_run)
        failed += not status.startswith("ok")
        statuses.append(f"- {row.name}: {status}")
        table = markdown(read_records(args.out / "device.jsonl"), title) + "\n" + "\n".join(statuses) + "\n"
        (args.out / "device.md").write_text(table)
        print(f"{row.name}: {status}", flush=True)
    print("\n" + (args.out / "device.md").read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
