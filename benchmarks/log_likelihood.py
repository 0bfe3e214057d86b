"""Throughput of the importance-sampled log-likelihood (K = 5000), side by side in one process.

Model: the 784-400-50 MLP VAE with a Bernoulli likelihood, trained briefly on Fashion-MNIST
(or random images if it is not installed). Compared, on the same test images:

- pyrovae: ``pyrovae.log_likelihood(vae, x)`` (Pyro traces, chunked under the memory budget);
- canonical: ``pyrovae.log_likelihood(model, guide, x)`` of the textbook Pyro VAE of
  ``canonical_pyro.py`` with the same weights, the contract check included (best of the rounds;
  target: at least 0.9x the speed of plain);
- plain: a hand-written, vectorized PyTorch estimator of the same model with the same weights
  and the same chunks (target: pyrovae at least 0.9x its speed);
- loop: pyrovae's estimator called one example at a time (target: at least 20x slower than
  the batched estimator);
- the decoder's matmuls alone at the chunk's shape, as a FLOP rate: the fraction of it the
  estimator reaches.

Rounds alternate between pyrovae and plain so machine noise hits both alike.

    python benchmarks/log_likelihood.py [--device cpu|cuda] [--examples 100] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from canonical_pyro import CanonicalVAE  # noqa: E402
from plain_vae import PlainVAE  # noqa: E402

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset  # noqa: E402
from pyrovae.data.datasets import DataNotFoundError, from_arrays  # noqa: E402
from pyrovae.inference.evaluate import (  # noqa: E402
    DEFAULT_MEMORY_BUDGET,
    chunk_shape,
    log_importance_weights,
    log_likelihood,
    vae_sampler,
)
from pyrovae.memory import bytes_allocated  # noqa: E402
from pyrovae.settings import resolve_device  # noqa: E402

DECODER_FLOPS_PER_SAMPLE = 2 * (50 * 400 + 400 * 784)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def plain_log_likelihood(plain: PlainVAE, x: torch.Tensor, num_samples: int, particles: int,
                         examples: int) -> torch.Tensor:
    """The same estimator by hand: running logsumexp over chunks of particles, examples in batches."""
    out = []
    for start in range(0, len(x), examples):
        xb = x[start:start + examples]
        total = torch.full((len(xb),), -math.inf, device=x.device)
        for done in range(0, num_samples, particles):
            total = torch.logaddexp(total, plain.log_weights(xb, min(particles, num_samples - done)).logsumexp(0))
        out.append(total - math.log(num_samples))
    return torch.cat(out)


@torch.no_grad()
def matmul_flop_rate(plain: PlainVAE, rows: int, device, repeats: int = 5) -> float:
    """FLOP/s of the decoder's two matmuls alone (no bias, activation or likelihood)."""
    w1, w2 = plain.decoder[0].weight.T.contiguous(), plain.decoder[2].weight.T.contiguous()
    z = torch.randn(rows, 50, device=device)
    seconds = min(timed(lambda: (z @ w1) @ w2, device) for _ in range(repeats))
    return DECODER_FLOPS_PER_SAMPLE * rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--examples", type=int, default=100, help="test images per timed estimate")
    parser.add_argument("--loop-examples", type=int, default=10, help="images for the one-at-a-time loop")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--memory-budget", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30, help="GiB")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    budget = args.memory_budget * 2**30

    try:
        data = load_dataset(DataConfig(dataset="fashion-mnist", binarize="dynamic", download=False))
    except DataNotFoundError:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); using random images")
        data = from_arrays(torch.rand(6000, 28, 28), binarize="dynamic", name="random")
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 28, 28), z_dim=50, hidden=(400,)))
    fit(vae, data, TrainConfig(epochs=args.train_epochs, device=str(device.type)), progress=False)
    vae.eval()
    plain = PlainVAE().to(device).eval()
    plain.encoder.load_state_dict(vae.encoder.net.state_dict())
    plain.decoder.load_state_dict(vae.decoder.net.state_dict())
    canonical = CanonicalVAE().to(device).eval()
    canonical.encoder.net.load_state_dict(vae.encoder.net.state_dict())
    canonical.decoder.net.load_state_dict(vae.decoder.net.state_dict())
    x = data.test.x[:args.examples].to(device)
    K = args.num_samples
    particles, examples = chunk_shape(vae_sampler(vae, x), K, budget)
    print(f"device {device}; {len(x)} test images, K = {K}; chunks of {particles} particles x {examples} examples")

    def score_canonical():
        with canonical.own_params():
            return log_likelihood(canonical.model, canonical.guide, x, num_samples=K, memory_budget=budget)

    seconds = {"pyrovae": [], "canonical": [], "plain": []}
    estimates = {}
    for _ in range(args.rounds):
        seconds["pyrovae"].append(timed(lambda: estimates.__setitem__("pyrovae", log_likelihood(
            vae, x, num_samples=K, memory_budget=budget)), device))
        seconds["canonical"].append(timed(lambda: estimates.__setitem__("canonical", score_canonical()), device))
        seconds["plain"].append(timed(lambda: estimates.__setitem__("plain", plain_log_likelihood(
            plain, x, K, particles, examples)), device))
    loop_x = x[:args.loop_examples]
    loop_seconds = timed(lambda: [log_likelihood(vae, loop_x[i:i + 1], num_samples=K, memory_budget=budget)
                                  for i in range(len(loop_x))], device)

    rate = {name: len(x) / statistics.median(times) for name, times in seconds.items()}
    best_rate = {name: len(x) / min(times) for name, times in seconds.items()}
    loop_rate = len(loop_x) / loop_seconds
    flops = matmul_flop_rate(plain, particles * examples, device)
    reached = rate["pyrovae"] * K * DECODER_FLOPS_PER_SAMPLE
    chunk_bytes = bytes_allocated(lambda: log_importance_weights(vae, x[:examples], None, particles))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        log_likelihood(vae, x[:examples], num_samples=K, memory_budget=budget)
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = None
    result = {
        "device": str(device), "platform": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "pyro": pyro.__version__,
        "num_samples": K, "examples": len(x), "chunk": [particles, examples],
        "examples_per_second": rate, "ratio_pyrovae_to_plain": rate["pyrovae"] / rate["plain"],
        "best_examples_per_second": best_rate,
        "ratio_canonical_to_plain": best_rate["canonical"] / best_rate["plain"],
        "loop_examples_per_second": loop_rate, "speedup_over_loop": rate["pyrovae"] / loop_rate,
        "matmul_flops_per_second": flops, "decoder_flops_per_second_reached": reached,
        "fraction_of_matmul_rate": reached / flops,
        "chunk_bytes_allocated": chunk_bytes, "memory_budget_bytes": budget, "cuda_peak_bytes": peak,
        "mean_nll": {name: -values.mean().item() for name, values in estimates.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
