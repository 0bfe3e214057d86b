"""Data-parallel scaling: training examples per second at one global batch, 1 process against N.

On a CPU: 1 process of T threads against 2 DDP processes (launched by torchrun) of T / 2
threads each, the same cores either way, the processes averaging their gradients with
DDP's all-reduce over gloo; target: 2 processes of 1 thread reach at least 0.8x the
examples/second of 1 process of 2 threads at a global batch of 1024, i.e. the gradient
exchange costs little. On GPUs: 1, 2, ... N processes, one GPU each (NCCL). Model: the
784-400-50 MLP VAE with Bernoulli likelihood; data: Fashion-MNIST (or random binary
images) resident on each device. Configurations alternate in rounds; the figures are
medians over the rounds.

    python benchmarks/scaling.py [--device cpu|cuda] [--batch-size 1024] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

from pyrovae import DataConfig, ModelConfig, build_vae, load_dataset
from pyrovae.data.datasets import DataNotFoundError
from pyrovae.distributed import join, shard, wait_for_all
from pyrovae.inference.objectives import TraceELBO
from pyrovae.settings import resolve_device
from pyrovae.training.step import SVIStep


def training_images(device: torch.device) -> torch.Tensor:
    try:
        x = load_dataset(DataConfig(dataset="fashion-mnist", binarize="static", download=False)).train.x
    except DataNotFoundError:
        x = torch.bernoulli(torch.full((54000, 784), 0.3))
    return x.to(device)


def worker(args: argparse.Namespace) -> None:
    """Time ``--steps`` data-parallel training steps in this process (one rank under torchrun)."""
    torch.set_num_threads(args.threads)
    processes, device = join(resolve_device(args.device))
    x = training_images(device)
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 28, 28), z_dim=50, hidden=(400,))).to(device)
    step = SVIStep(vae, torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True), TraceELBO(max_plate_nesting=1),
                   processes=processes, data_size=len(x))  # as in fit
    local = args.batch_size // processes.world_size
    order = shard(torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device), processes)
    batches = [x[order[i * local:(i + 1) * local]] for i in range(len(order) // local)]
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    wait_for_all(processes)
    started = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    wait_for_all(processes)
    seconds = time.perf_counter() - started
    if processes.is_main:
        print(json.dumps({"examples_per_second": args.steps * args.batch_size / seconds}))


def run_configuration(args: argparse.Namespace, processes: int, threads: int) -> float:
    """Examples/second of one launch with ``processes`` processes of ``threads`` threads."""
    command = [__file__, "--worker", "--device", args.device, "--threads", str(threads),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([*launcher, *command], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=1024, help="the global batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all (CPU only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    device = resolve_device(args.device)
    args.device = device.type
    if device.type == "cuda":
        configurations = [(n, 1, "nccl") for n in range(1, torch.cuda.device_count() + 1)]
    else:
        configurations = [(1, args.threads, "-")] + ([(2, args.threads // 2, "gloo")] if args.threads >= 2 else [])
    rates: dict[tuple[int, int, str], list[float]] = {c: [] for c in configurations}
    for _ in range(args.rounds):
        for processes, threads, exchange in configurations:
            rates[(processes, threads, exchange)].append(run_configuration(args, processes, threads))
    base = statistics.median(rates[configurations[0]])
    rows = [{"processes": p, "threads_per_process": t, "exchange": e, "examples_per_second": statistics.median(r),
             "ratio_to_one_process": statistics.median(r) / base} for (p, t, e), r in rates.items()]
    print(f"\n{device}, global batch {args.batch_size}, median of {args.rounds} launches\n"
          f"| processes x threads | gradient exchange | examples/s | ratio to 1 process |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['processes']} x {row['threads_per_process']} | {row['exchange']} "
              f"| {row['examples_per_second']:.0f} | {row['ratio_to_one_process']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": str(device), "batch_size": args.batch_size, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
