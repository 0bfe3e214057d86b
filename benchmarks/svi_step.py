"""SVI step time of pyrovae against a plain PyTorch VAE of identical math, in one process.

Model: 784-400-50 MLP, Bernoulli likelihood, Adam; batches are slices of device-resident
Fashion-MNIST (dynamically binarized), or random binary images if it is not installed.
Both loops alternate in rounds (taking turns to go first) so machine noise hits them alike;
the figure is the median over rounds of each round's ratio (target: at most 1.15 on a CPU).
Then a few training epochs of each on Fashion-MNIST, taking turns: median epoch seconds,
the median ratio of the epochs, and the test negative ELBO each reaches.

    python benchmarks/svi_step.py [--device cpu|cuda] [--batch-sizes 128 1024] [--rounds 40]
"""

from __future__ import annotations

import argparse
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
from plain_vae import PlainVAE  # noqa: E402

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset  # noqa: E402
from pyrovae.data import DataNotFoundError, from_arrays  # noqa: E402
from pyrovae.evaluate import negative_elbo  # noqa: E402
from pyrovae.train import ELBOS, SVIStep, resolve_device  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fashion_mnist():
    try:
        return load_dataset(DataConfig(dataset="fashion-mnist", binarize="dynamic", download=False))
    except DataNotFoundError:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); using random images")
        return from_arrays(torch.rand(6000, 28, 28), binarize="dynamic", name="random")


def step_times(data, device, batch_size: int, rounds: int, steps: int, meanfield: bool) -> dict:
    """Median seconds per step of each implementation over interleaved rounds, and the median ratio."""
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 28, 28), z_dim=50, hidden=(400,))).to(device)
    plain = PlainVAE().to(device)
    elbo = ELBOS["meanfield" if meanfield else "trace"]()
    pyro_step = SVIStep(vae, torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True), elbo)
    x_all = data.train.x.to(device)
    vae.data_size = len(x_all)  # as in fit: the data plate scales each batch to the dataset

    def plain_step(x):
        loss = plain.loss(x, closed_form_kl=meanfield)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    n_batches = len(x_all) // batch_size
    batches = [torch.bernoulli(x_all[i * batch_size:(i + 1) * batch_size]) for i in range(min(n_batches, 50))]

    def timed(step) -> float:
        synchronize(device)
        started = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        synchronize(device)
        return (time.perf_counter() - started) / steps

    for step in (pyro_step, plain_step):  # warm up allocator and caches (and Pyro's first-step checks)
        timed(step)
    pyro_rounds, plain_rounds = [], []
    for i in range(rounds):  # each round times both, in alternating order, under the same machine load
        if i % 2:
            plain_rounds.append(timed(plain_step))
            pyro_rounds.append(timed(pyro_step))
        else:
            pyro_rounds.append(timed(pyro_step))
            plain_rounds.append(timed(plain_step))
    ratio = statistics.median(p / q for p, q in zip(pyro_rounds, plain_rounds))
    return {"batch_size": batch_size, "elbo": "meanfield" if meanfield else "trace",
            "pyrovae_ms": statistics.median(pyro_rounds) * 1e3, "plain_ms": statistics.median(plain_rounds) * 1e3,
            "ratio": ratio}


@torch.no_grad()
def plain_test_neg_elbo(plain: PlainVAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean single-sample negative ELBO per test image of the plain VAE."""
    return sum(plain.loss(x[i:i + batch_size]).item() for i in range(0, len(x), batch_size)) / len(x)


def training_comparison(data, device, batch_size: int, epochs: int) -> dict:
    """``epochs`` of pyrovae's ``fit`` and of a plain loop over the same batches: seconds and test -ELBO.

    The two take turns epoch by epoch (``fit`` resumes from its run directory), so a change
    in the machine's load hits both alike.
    """
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 28, 28), z_dim=50, hidden=(400,)))
    pyro.set_rng_seed(0)
    plain = PlainVAE().to(device)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=True)
    on_device = data.to(device)

    def plain_epoch() -> float:
        synchronize(device)
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for x, _ in on_device.batches(batch_size):
            loss = plain.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        total.item()
        return time.perf_counter() - started

    def pyrovae_epoch(epoch: int, run_dir: str) -> float:
        config = TrainConfig(epochs=epoch, batch_size=batch_size, device=device.type)
        return fit(vae, data, config, run_dir=run_dir, resume=epoch > 1, progress=False)[-1]["epoch_seconds"]

    pyro_seconds, plain_seconds = [], []
    with tempfile.TemporaryDirectory() as run_dir:
        for epoch in range(1, epochs + 1):
            if epoch % 2:
                pyro_seconds.append(pyrovae_epoch(epoch, run_dir))
                plain_seconds.append(plain_epoch())
            else:
                plain_seconds.append(plain_epoch())
                pyro_seconds.append(pyrovae_epoch(epoch, run_dir))
    pyro.set_rng_seed(0)
    pyro_test = negative_elbo(vae, data.test.x).mean().item()
    return {"examples": len(data.train), "batch_size": batch_size, "epochs": epochs,
            "pyrovae_epoch_seconds": statistics.median(pyro_seconds),
            "plain_epoch_seconds": statistics.median(plain_seconds),
            "ratio": statistics.median(p / q for p, q in zip(pyro_seconds, plain_seconds)),
            "pyrovae_test_neg_elbo": pyro_test, "plain_test_neg_elbo": plain_test_neg_elbo(plain, on_device.test.x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=15, help="steps per round")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the training comparison")
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
    print("\n| batch | ELBO | pyrovae ms/step | plain PyTorch ms/step | ratio |\n|---|---|---|---|---|")
    for r in steps:
        print(f"| {r['batch_size']} | {r['elbo']} | {r['pyrovae_ms']:.3f} | {r['plain_ms']:.3f} | {r['ratio']:.3f} |")
    epoch = training_comparison(data, device, 128, args.epochs)
    print(f"\n| {data.name}, {epoch['examples']} images, batch 128, {args.epochs} epochs | pyrovae | plain PyTorch "
          f"| ratio |\n|---|---|---|---|\n| median epoch seconds | {epoch['pyrovae_epoch_seconds']:.2f} "
          f"| {epoch['plain_epoch_seconds']:.2f} | {epoch['ratio']:.3f} |\n| test negative ELBO (nats) "
          f"| {epoch['pyrovae_test_neg_elbo']:.2f} | {epoch['plain_test_neg_elbo']:.2f} | |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "device": str(device), "steps": steps,
                                         "epoch": epoch}, indent=2))


if __name__ == "__main__":
    main()
