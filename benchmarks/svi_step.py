"""Training speed of pyrovae against the canonical Pyro loop and a plain PyTorch VAE, in one process.

The issue's figures are epoch times on Fashion-MNIST (784-400-50 MLP, Bernoulli
likelihood, batch 128, dynamically binarized): pyrovae's ``fit`` at most 0.90x the
canonical Pyro loop of ``canonical_pyro.py`` and at most 1.35x the plain PyTorch VAE of
``plain_vae.py`` (same nets, same single-sample ELBO). The three take turns epoch by
epoch, each going first in turn (``fit`` resumes from a temporary run directory), so a
change in the machine's load hits them alike; the figures are the medians over the epochs
of the per-epoch ratios. All three draw their batches the same way (shuffled slices of
device-resident images, binarized afresh) and reach about the same test negative ELBO,
which is printed beside the times as a check that they do the same work.

Before that, the time of one training step of each (pyrovae's ``SVIStep``, ``svi.step``,
the plain loop's step) at batch 128 and 1024, with ``Trace_ELBO`` and with the closed-form
KL, taking turns in rounds; the figures are medians over rounds of each round's ratio.
They show where an epoch's time goes; they carry no target.

    python benchmarks/svi_step.py [--device cpu|cuda] [--batch-sizes 128 1024] [--rounds 30] [--epochs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from canonical_pyro import CanonicalVAE  # noqa: E402
from plain_vae import PlainVAE  # noqa: E402

from pyrovae import (  # noqa: E402
    DataConfig,
    DataNotFoundError,
    ModelConfig,
    TrainConfig,
    build_vae,
    fit,
    from_arrays,
    load_dataset,
    negative_elbo,
)
from pyrovae.data.datasets import as_floats  # noqa: E402
from pyrovae.settings import resolve_device  # noqa: E402
from pyrovae.training.config import ELBOS  # noqa: E402
from pyrovae.training.step import SVIStep  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fashion_mnist():
    """Fashion-MNIST, dynamically binarized; random gray images (6000) when it is not installed."""
    try:
        return load_dataset(DataConfig(dataset="fashion-mnist", binarize="dynamic", download=False))
    except DataNotFoundError:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); using random images")
        return from_arrays(torch.rand(6000, 28, 28), binarize="dynamic", name="random")


def default_vae(device: torch.device):
    """pyrovae's default model at the benchmark's size: 784-400-50 MLP, Bernoulli likelihood."""
    return build_vae(ModelConfig(image_shape=(1, 28, 28), z_dim=50, hidden=(400,))).to(device)


def taking_turns(loops: dict, turns: int) -> dict[str, list[float]]:
    """Call each of ``loops`` (name -> function returning seconds) ``turns`` times, the first rotating."""
    names, seconds = list(loops), {name: [] for name in loops}
    for turn in range(turns):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            seconds[name].append(loops[name]())
    return seconds


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def step_times(data, device, batch_size: int, rounds: int, steps: int, meanfield: bool) -> dict:
    """Median seconds per training step of each implementation over rounds, and the median ratios."""
    pyro.set_rng_seed(0)
    vae = default_vae(device)
    x_all = as_floats(data.train.x.to(device))
    pyrovae_step = SVIStep(vae, torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True),
                           ELBOS["meanfield" if meanfield else "trace"](max_plate_nesting=1),
                           data_size=len(x_all))  # as in fit: each batch stands for the dataset
    plain = PlainVAE().to(device)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    canonical = CanonicalVAE(meanfield=meanfield).to(device)

    def plain_step(x):
        loss = plain.loss(x, closed_form_kl=meanfield)
        plain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain_optimizer.step()

    batches = [torch.bernoulli(x_all[i:i + batch_size])
               for i in range(0, min(len(x_all) - batch_size + 1, 50 * batch_size), batch_size)]

    def timed(step, context=contextlib.nullcontext):
        def run() -> float:
            with context():
                synchronize(device)
                started = time.perf_counter()
                for i in range(steps):
                    step(batches[i % len(batches)])
                synchronize(device)
                return (time.perf_counter() - started) / steps
        return run

    loops = {"pyrovae": timed(pyrovae_step), "plain": timed(plain_step),
             "canonical": timed(canonical.svi.step, canonical.own_params)}
    taking_turns(loops, len(loops))  # warm up allocator and caches (and Pyro's first-step checks)
    seconds = taking_turns(loops, rounds)
    return {"batch_size": batch_size, "elbo": "meanfield" if meanfield else "trace",
            **{f"{name}_ms": statistics.median(s) * 1e3 for name, s in seconds.items()},
            "ratio_to_plain": median_ratio(seconds["pyrovae"], seconds["plain"]),
            "ratio_to_canonical": median_ratio(seconds["pyrovae"], seconds["canonical"])}


@torch.no_grad()
def plain_test_neg_elbo(plain: PlainVAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean single-sample negative ELBO per test image of the plain VAE."""
    return sum(plain.loss(x[i:i + batch_size]).item() for i in range(0, len(x), batch_size)) / len(x)


def epoch_comparison(data, device, batch_size: int, epochs: int) -> dict:
    """``epochs`` epochs of pyrovae's ``fit``, the canonical Pyro loop and the plain loop, taking turns.

    Each epoch's seconds cover the training steps only (``fit``'s ``epoch_seconds``, which
    leaves out validation and the checkpoint), then the test negative ELBO each reached.
    """
    data = data.to(device)
    pyro.set_rng_seed(0)
    vae = default_vae(device)
    pyro.set_rng_seed(0)
    canonical = CanonicalVAE().to(device)
    pyro.set_rng_seed(0)
    plain = PlainVAE().to(device)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    run_dir = tempfile.TemporaryDirectory()
    done = 0

    def pyrovae_epoch() -> float:
        nonlocal done
        done += 1
        config = TrainConfig(epochs=done, batch_size=batch_size, device=device.type)
        return fit(vae, data, config, run_dir=run_dir.name, resume=done > 1, progress=False)[-1]["epoch_seconds"]

    def canonical_epoch() -> float:
        synchronize(device)
        started = time.perf_counter()
        canonical.epoch(data.batches(batch_size))
        synchronize(device)
        return time.perf_counter() - started

    def plain_epoch() -> float:  # as plain PyTorch code that keeps the loss on the device does
        synchronize(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for x, _ in data.batches(batch_size):
            loss = plain.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        total.item()
        return time.perf_counter() - started

    with run_dir:
        seconds = taking_turns({"pyrovae": pyrovae_epoch, "canonical": canonical_epoch, "plain": plain_epoch}, epochs)
    pyro.set_rng_seed(0)
    test_x = data.test.x
    return {"dataset": data.name, "examples": len(data.train), "batch_size": batch_size, "epochs": epochs,
            "epoch_seconds": seconds,
            **{f"{name}_epoch_seconds": statistics.median(s) for name, s in seconds.items()},
            "ratio_to_canonical": median_ratio(seconds["pyrovae"], seconds["canonical"]),
            "ratio_to_plain": median_ratio(seconds["pyrovae"], seconds["plain"]),
            "test_neg_elbo": {"pyrovae": negative_elbo(vae, test_x).mean().item(),
                              "canonical": canonical.test_neg_elbo(test_x),
                              "plain": plain_test_neg_elbo(plain, test_x)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[128], help="for the step times; none: skip")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=15, help="steps per round")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the epoch comparison")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = fashion_mnist()
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {device} ({machine}); torch {torch.__version__}, pyro {pyro.__version__}")

    steps = [step_times(data, device, b, args.rounds, args.steps, meanfield)
             for b in args.batch_sizes for meanfield in (False, True)]
    if steps:
        print("\n| batch | ELBO | pyrovae ms/step | canonical Pyro | plain PyTorch | pyrovae / canonical "
              "| pyrovae / plain |\n|---|---|---|---|---|---|---|")
    for r in steps:
        print(f"| {r['batch_size']} | {r['elbo']} | {r['pyrovae_ms']:.3f} | {r['canonical_ms']:.3f} "
              f"| {r['plain_ms']:.3f} | {r['ratio_to_canonical']:.3f} | {r['ratio_to_plain']:.3f} |")
    epoch = epoch_comparison(data, device, 128, args.epochs)
    elbo = epoch["test_neg_elbo"]
    print(f"\n{data.name}, {epoch['examples']} images, batch 128, {args.epochs} epochs each, taking turns\n"
          f"| | pyrovae | canonical Pyro | plain PyTorch |\n|---|---|---|---|\n"
          f"| median epoch seconds | {epoch['pyrovae_epoch_seconds']:.2f} | {epoch['canonical_epoch_seconds']:.2f} "
          f"| {epoch['plain_epoch_seconds']:.2f} |\n"
          f"| pyrovae's time, median ratio | | {epoch['ratio_to_canonical']:.3f} (target <= 0.90) "
          f"| {epoch['ratio_to_plain']:.3f} (target <= 1.35) |\n"
          f"| test negative ELBO (nats) | {elbo['pyrovae']:.2f} | {elbo['canonical']:.2f} | {elbo['plain']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "device": str(device), "steps": steps,
                                         "epoch": epoch}, indent=2) + "\n")


if __name__ == "__main__":
    main()
