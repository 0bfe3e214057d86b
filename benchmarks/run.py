"""The benchmark suite: every speed figure of the issues, in one run, on whatever device is here.

Runs, each in its own process (so one's memory does not weigh on the next):

- ``svi_step.py``: epoch time on Fashion-MNIST (batch 128) of pyrovae's ``fit`` against the
  canonical Pyro loop (ratio; target <= 0.90) and a plain PyTorch VAE (target <= 1.35),
  taking turns epoch by epoch, with the test negative ELBO each reaches; before that, the
  step times of the three at batch 128 and 1024 (no target);
- ``log_likelihood.py``: importance-sampling throughput at K = 5000, of pyrovae's VAE and of
  the canonical Pyro VAE, against a plain vectorized estimator (target >= 0.9) and a loop
  over examples, and the fraction of the matmul rate;
  on a GPU over the 10,000 test images (target: under 10 seconds on an H100);
- ``scaling.py``: data-parallel scaling, 1 process of 2 threads against 2 DDP processes of
  1 thread on a CPU, gradients averaged by gloo's all-reduce (target >= 0.8), 1..N
  processes on GPUs;

and, in this process, the cost of the run directory's lock, taken once per run, against an
epoch (target < 1%); then writes ``benchmarks/results/<machine>.json`` (every figure, and each part's peak
memory) and ``benchmarks/results/<machine>.md`` (the table), and prints the table.
About 4 minutes on a quiet 2-core CPU (``--quick``: about 2).

    python benchmarks/run.py [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyrovae.runs.lock import RunLock

HERE = Path(__file__).parent
EPOCH_TARGETS = {"canonical": 0.90, "plain": 1.35}  # pyrovae's epoch time over each reference's, at most
SCALING_TARGET, GPU_EPOCH_TARGET, GPU_NLL_TARGET = 0.8, 1.5, 10.0


def machine_name(device: str) -> str:
    """``cpu-2core`` or the GPU's name, e.g. ``nvidia-h100-80gb-hbm3``: the results' file name."""
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def run_part(script: str, args: list[str], out: Path) -> dict:
    """Run one benchmark script with ``--json out``; its figures, its seconds and its peak memory."""
    started = time.perf_counter()
    command = [sys.executable, "-c", PEAK_MEMORY_WRAPPER, str(HERE / script), *args, "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{script} failed:\n{result.stderr[-3000:]}")
    print(result.stdout.split("\n{")[0].rstrip(), flush=True)  # its own table, without the JSON dump
    peak = json.loads(result.stderr.strip().splitlines()[-1])
    return {**json.loads(out.read_text()), "seconds": time.perf_counter() - started, **peak}


PEAK_MEMORY_WRAPPER = """
import json, resource, runpy, sys, torch
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(peak), file=sys.stderr)
"""


def lock_seconds(repeats: int = 200) -> float:
    """Median seconds to take and release a run directory's lock, which ``fit`` does once per run."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            started = time.perf_counter()
            with RunLock(Path(folder) / "run"):
                pass
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def table(results: dict) -> str:
    """The Markdown summary: every figure beside its target, then the step times."""
    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    steps, epoch, ll, scaling = results["svi_step"], results["svi_step"]["epoch"], results["log_likelihood"], \
        results["scaling"]
    gpu = results["device"] == "cuda"
    lines = [f"# Benchmarks on {results['machine']}", "",
             f"{results['date']}; torch {results['torch']}, pyro {results['pyro']}, {results['platform']}.", "",
             "| figure | pyrovae | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    references = {"canonical": "canonical Pyro", "plain": "plain PyTorch"}
    for name, reference in references.items():
        ratio, target = epoch[f"ratio_to_{name}"], EPOCH_TARGETS[name]
        lines.append(f"| epoch, {epoch['dataset']} ({epoch['examples']} images), batch 128 (s) | "
                     f"{epoch['pyrovae_epoch_seconds']:.2f} | {epoch[f'{name}_epoch_seconds']:.2f} {reference} | "
                     f"{ratio:.3f} | <= {target:.2f} | {mark(ratio <= target)} |")
    lock_fraction = results["lock_seconds"] / epoch["pyrovae_epoch_seconds"]
    lines.append(f"| run lock, taken once per run (ms) | {results['lock_seconds'] * 1e3:.2f} | "
                 f"{epoch['pyrovae_epoch_seconds']:.2f} s epoch | {lock_fraction:.5f} | < 0.01 | "
                 f"{mark(lock_fraction < 0.01)} |")
    elbo = epoch["test_neg_elbo"]
    lines.append(f"| test -ELBO after {epoch['epochs']} epochs (nats) | {elbo['pyrovae']:.2f} | "
                 f"{elbo['canonical']:.2f} canonical, {elbo['plain']:.2f} plain | - | - | - |")
    if gpu:
        per_60k = epoch["pyrovae_epoch_seconds"] * 60000 / epoch["examples"]
        lines.append(f"| epoch of 60,000 images, batch 128 (s) | {per_60k:.2f} | - | - | < 1.5 (H100) | "
                     f"{mark(per_60k < GPU_EPOCH_TARGET)} |")
    rate = ll["examples_per_second"]
    lines.append(f"| log p(x), K = {ll['num_samples']} (examples/s) | {rate['pyrovae']:.1f} | {rate['plain']:.1f} "
                 f"plain vectorized | {ll['ratio_pyrovae_to_plain']:.2f} | >= 0.9 | "
                 f"{mark(ll['ratio_pyrovae_to_plain'] >= 0.9)} |")
    if "ratio_canonical_to_plain" in ll:  # the canonical Pyro VAE scored by log_likelihood(model, guide, x)
        best = ll["best_examples_per_second"]
        lines.append(f"| log p(x) of the canonical Pyro VAE, best round (examples/s) | {best['canonical']:.1f} | "
                     f"{best['plain']:.1f} plain vectorized | {ll['ratio_canonical_to_plain']:.2f} | >= 0.9 | "
                     f"{mark(ll['ratio_canonical_to_plain'] >= 0.9)} |")
    lines.append(f"| log p(x) against a loop over examples | {rate['pyrovae']:.1f} | "
                 f"{ll['loop_examples_per_second']:.1f} loop | {ll['speedup_over_loop']:.2f} | >= 20 | "
                 f"{mark(ll['speedup_over_loop'] >= 20)} |")
    lines.append(f"| fraction of the decoder's matmul rate | {ll['decoder_flops_per_second_reached'] / 1e9:.1f} "
                 f"GFLOP/s | {ll['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s | "
                 f"{ll['fraction_of_matmul_rate']:.2f} | - | - |")
    if gpu:
        seconds_10k = 10000 / rate["pyrovae"]
        lines.append(f"| log p(x) of 10,000 test images, K = 5000 (s) | {seconds_10k:.1f} | - | - | < 10 | "
                     f"{mark(seconds_10k < GPU_NLL_TARGET)} |")
    for row in scaling["rows"][1:]:
        targeted = not gpu  # the CPU's 2 x 1 threads against 1 x 2 threads
        lines.append(f"| {row['processes']} processes x {row['threads_per_process']} threads, {row['exchange']}, "
                     f"batch {scaling['batch_size']} (examples/s) | {row['examples_per_second']:.0f} | "
                     f"{scaling['rows'][0]['examples_per_second']:.0f} one process | "
                     f"{row['ratio_to_one_process']:.3f} | {'>= 0.8' if targeted else '-'} | "
                     f"{mark(row['ratio_to_one_process'] >= SCALING_TARGET) if targeted else '-'} |")
    lines += ["", "Step times (ms; where an epoch's time goes, no target):", "",
              "| batch | ELBO | pyrovae | canonical Pyro | plain PyTorch | pyrovae / canonical | pyrovae / plain |",
              "|---|---|---|---|---|---|---|"]
    for row in steps["steps"]:
        lines.append(f"| {row['batch_size']} | {row['elbo']} | {row['pyrovae_ms']:.3f} | {row['canonical_ms']:.3f} | "
                     f"{row['plain_ms']:.3f} | {row['ratio_to_canonical']:.3f} | {row['ratio_to_plain']:.3f} |")
    lines += ["", "| part | seconds | peak RSS (MiB) | peak GPU memory (MiB) |", "|---|---|---|---|"]
    for part in ("svi_step", "log_likelihood", "scaling"):
        r = results[part]
        cuda = f"{r['peak_cuda_bytes'] / 2**20:.0f}" if "peak_cuda_bytes" in r else "-"
        lines.append(f"| {part} | {r['seconds']:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | {cuda} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and epochs (a smoke test, not figures)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder for <machine>.json and .md")
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    gpu = device == "cuda"
    rounds, epochs = (2, 1) if args.quick else (30, 5)
    parts = {
        "svi_step": ("svi_step.py", ["--device", device, "--batch-sizes", "128", "1024", "--rounds", str(rounds),
                                     "--epochs", str(epochs)]),
        "log_likelihood": ("log_likelihood.py", ["--device", device, "--rounds", "2" if args.quick else "3",
                                                 "--examples", "10000" if gpu else ("10" if args.quick else "40"),
                                                 "--loop-examples", "3" if args.quick else "10"]),
        "scaling": ("scaling.py", ["--device", device, "--rounds", "2" if args.quick else "5"]),
    }
    results = {"machine": machine_name(device), "device": device, "date": time.strftime("%Y-%m-%d"),
               "torch": torch.__version__, "pyro": pyro.__version__,
               "platform": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (script, script_args) in parts.items():
            print(f"\n== {script} ==", flush=True)
            results[name] = run_part(script, script_args, Path(scratch) / f"{name}.json")
    results["lock_seconds"] = lock_seconds()
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / (results["machine"] + ("-quick" if args.quick else ""))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    summary = table(results)
    stem.with_suffix(".md").write_text(summary)
    print("\n" + summary + f"\nwritten to {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
